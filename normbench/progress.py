"""A progress bar per run, for a terminal: epoch x/N, SGD steps, running training loss, img/s.

Lightning's own bars count its calls (one call takes several SGD steps here, ``steps_per_call``),
say "Epoch 0/0" for a one-epoch run, and overwrite the per-epoch log lines. This callback
draws one rich bar per run (or pack) over its SGD steps and keeps every finished epoch's log
line visible above it: while the bar is live, the console log handlers write through rich's
console (``Live`` redirects ``sys.stdout``/``sys.stderr``; a handler keeps the stream it was
made with, so it is pointed at the redirected one and back).

The running loss is read from the module's on-device sums at most every ``refresh_s``
seconds (one host sync then), never every step.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class RunProgress(Callback):
    """One bar for the run (or pack) ``label`` (module docstring)."""

    def __init__(self, label: str, refresh_s: float = 0.5, console: Console | None = None) -> None:
        self.label, self.refresh_s = label, refresh_s
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self._handlers: list[tuple[logging.StreamHandler, Any]] = []

    def _description(self, trainer: L.Trainer) -> str:
        return f"{self.label}  epoch {min(trainer.current_epoch + 1, trainer.max_epochs)}/{trainer.max_epochs}"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("steps  loss {task.fields[loss]}  {task.fields[rate]} img/s"),
                                 TimeRemainingColumn(), console=self.console, redirect_stdout=True,
                                 redirect_stderr=True, transient=False)
        self.progress.start()
        for h in logging.getLogger().handlers + logging.getLogger("normbench").handlers:
            if type(h) is logging.StreamHandler and h.stream in (sys.__stdout__, sys.__stderr__):
                out = sys.stdout if h.stream is sys.__stdout__ else sys.stderr  # rich's proxies now
                self._handlers.append((h, h.setStream(out)))
        total = trainer.max_epochs * getattr(pl_module, "steps_per_epoch", 0)
        self.task = self.progress.add_task(self._description(trainer), total=total or None,
                                           completed=trainer.global_step, loss="-", rate="-")
        self._t, self._step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        now = time.perf_counter()
        if self.progress is None or now - self._t < self.refresh_s:
            return
        seen = max(1, getattr(pl_module, "_train_seen", 0))
        loss = getattr(pl_module, "_train_loss", None)
        shown = f"{float(loss.float().mean()) / seen:.4f}" if loss is not None else "-"
        steps = trainer.global_step
        rate = (steps - self._step) * getattr(pl_module, "batch_size", 0) / (now - self._t)
        self.progress.update(self.task, completed=steps, description=self._description(trainer), loss=shown,
                             rate=f"{rate:,.0f}")
        self._t, self._step = now, steps

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=self._description(trainer))

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        for h, old in self._handlers:
            h.setStream(old)
        self._handlers = []

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=trainer.global_step)
        self._stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._stop()
