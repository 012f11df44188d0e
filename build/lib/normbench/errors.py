"""Errors a user can cause and fix: each prints as one line naming the problem and the fix."""


class NormbenchError(Exception):
    """Base of every error whose message is meant for the user as one line."""


class ConfigError(NormbenchError, ValueError):
    """A config key holds a value the harness cannot run (checked before training)."""


class DataError(NormbenchError, RuntimeError):
    """A dataset is missing, corrupt, or cannot be downloaded."""
