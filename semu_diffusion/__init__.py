"""semu-diffusion: erase concepts from Stable Diffusion models with SEMU low-rank updates."""
from __future__ import annotations

__version__ = "0.1.0"


def erase(*args, **kwargs):
    """Erase a concept; see :func:`semu_diffusion.api.erase`."""
    from .api import erase as _erase

    return _erase(*args, **kwargs)


def load_delta(pipe, path, strength: float = 1.0, **kwargs):
    """Validate and apply a delta file to a diffusers pipeline; see :func:`semu_diffusion.delta.load_delta`."""
    from .delta import load_delta as _load

    return _load(pipe, path, strength=strength, **kwargs)


__all__ = ["__version__", "erase", "load_delta"]
