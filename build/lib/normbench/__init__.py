"""normbench: reproducible comparisons of normalization layers on AlexNet-era CNNs."""

__version__ = "0.1.0"
