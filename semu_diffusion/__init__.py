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


def load_deltas(pipe, paths, weights=None, **kwargs):
    """Validate several delta files and apply them together, each scaled by its weight; see
    :func:`semu_diffusion.merge.load_deltas`."""
    from .merge import load_deltas as _load

    return _load(pipe, paths, weights, **kwargs)


def merge_deltas(paths, out, weights=None, **kwargs):
    """Fold several delta files into one (exact for LoRA factors); see :func:`semu_diffusion.merge.merge_deltas`."""
    from .merge import merge_deltas as _merge

    return _merge(paths, out, weights, **kwargs)


def erase_concepts(concepts, **kwargs):
    """Erase several concepts into one delta; see :func:`semu_diffusion.multi.erase_concepts`."""
    from .multi import erase_concepts as _erase

    return _erase(concepts, **kwargs)


__all__ = ["__version__", "erase", "erase_concepts", "load_delta", "load_deltas", "merge_deltas"]
