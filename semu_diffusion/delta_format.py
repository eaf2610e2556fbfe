"""The delta file format's constants, its error and its value checks: what the writer (:mod:`.delta`) and the
validator (:mod:`.validate`) share. A leaf module: it imports neither of them."""
from __future__ import annotations

import math
from pathlib import Path

import torch

FORMAT_VERSION = 1
PROVENANCE_KEY = "semu_provenance"
LORA_METADATA_KEY = "lora_adapter_metadata"  # what diffusers reads
PREFIX = "unet."
MAX_ABS_VALUE = 1e4  # no factor or weight update of a diffusion UNet comes near this (refused on write and on read)
MAX_STRENGTH = 10.0  # |strength| of load_delta and |weight| of a merged or stacked delta: the documented range
SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class DeltaError(ValueError):
    """A delta file that cannot be used with this base model; the message (one line) says why and what to do."""

    def __init__(self, msg: object = ""):
        super().__init__(str(msg).replace("\r", "\\r").replace("\n", "\\n"))  # one line, even for odd file names


def check_strength(value, what: str = "strength") -> float:
    """A delta's scale: a finite number in [-MAX_STRENGTH, MAX_STRENGTH] (beyond it a UNet's outputs blow up)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DeltaError(f"{what} must be a finite number, got {value!r}")
    if abs(value) > MAX_STRENGTH:
        raise DeltaError(f"{what} {value:g} is out of range: use a value in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}] "
                         "(1 = the erasure as trained)")
    return float(value)


def check_values(tensors: dict[str, torch.Tensor], where: str | Path) -> None:
    """Every delta tensor finite and within MAX_ABS_VALUE: the one value check of the writers and the reader."""
    for k, v in tensors.items():
        if not v.numel():
            continue
        vf = v.float() if v.dtype != torch.float64 else v
        if not torch.isfinite(vf).all():
            raise DeltaError(f"{where}: tensor {k[:80]!r} contains NaN or Inf values: the training diverged or the "
                             "file is damaged; re-create it (lower --lr)")
        m = float(vf.abs().max())
        if m > MAX_ABS_VALUE:
            raise DeltaError(f"{where}: tensor {k[:80]!r} has values up to {m:.3g} (limit {MAX_ABS_VALUE:g}): no "
                             "weight update is that large (a diverged training or a huge merge weight)")
