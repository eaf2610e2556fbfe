"""Load a base pipeline by name: "toy" (embedded), a local diffusers folder, or a hub id in the local cache."""
from __future__ import annotations

from pathlib import Path

import torch


class ModelLoadError(ValueError):
    pass


def model_label(loc: str) -> str:
    """A name for a model that is safe to share: the hub id for a Hugging Face cache folder
    (``.../models--org--name/snapshots/<rev>`` -> ``org/name``), a hub id as is, else the folder's name."""
    s = str(loc).strip()
    if s == "toy":
        return s
    parts = [x for x in s.replace("\\", "/").split("/") if x]
    for part in reversed(parts):
        if part.startswith("models--") and part.count("--") >= 2:
            return part[len("models--"):].replace("--", "/", 1)
    p = Path(s).expanduser()
    if not p.exists() and not s.startswith((".", "/", "~")) and s.count("/") == 1 and "\\" not in s:
        return s  # a hub id
    name = p.resolve().name if s in (".", "..") or s.endswith(("/.", "/..")) else (parts[-1] if parts else s)
    return name or "local-model"


def resolve_model(model: str | None) -> tuple[str, str]:
    """-> (kind, location) with kind in {"toy", "dir", "hub"}."""
    m = (model or "toy").strip()
    if m == "toy":
        from .toy import PIPELINE_DIR

        return "toy", str(PIPELINE_DIR)
    p = Path(m).expanduser()
    if p.exists():
        if not (p / "model_index.json").exists():
            raise ModelLoadError(f"{p} is not a diffusers pipeline folder (no model_index.json): pass a folder saved "
                                 "with pipe.save_pretrained(), a hub id, or 'toy'")
        return "dir", str(p)
    if m.startswith((".", "/", "~")) or m.count("/") != 1:
        raise ModelLoadError(f"model {m!r} not found: pass 'toy', an existing diffusers folder, or a hub id like "
                             "'org/name' that is in the local Hugging Face cache")
    return "hub", m


def load_pipeline(model: str | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Load a text-to-image pipeline offline. Errors name the fix; nothing is downloaded."""
    from diffusers import DiffusionPipeline

    kind, loc = resolve_model(model)
    if kind == "toy":
        from .toy import load_toy_pipeline

        pipe = load_toy_pipeline(loc, dtype=dtype, device=device)
    else:
        try:
            pipe = DiffusionPipeline.from_pretrained(loc, torch_dtype=dtype, local_files_only=True,
                                                     safety_checker=None, requires_safety_checker=False)
        except TypeError:
            pipe = DiffusionPipeline.from_pretrained(loc, torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"could not load {loc!r} offline ({str(e).splitlines()[0][:160]}): download it into "
                                 "the Hugging Face cache first, or pass a local folder") from None
        pipe.set_progress_bar_config(disable=True)
        pipe = pipe.to(device)
    if not hasattr(pipe, "unet"):
        raise ModelLoadError(f"{loc} has no UNet: SEMU supports Stable-Diffusion-family UNet pipelines")
    pipe.semu_model_id = "toy" if kind == "toy" else model_label(loc)  # shareable: no local path
    pipe.semu_model_path = loc  # where it was loaded from, on this machine
    return pipe
