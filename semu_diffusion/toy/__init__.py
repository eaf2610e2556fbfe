"""The embedded toy world: a tiny trained Stable-Diffusion-family pipeline and a tiny open_clip judge."""
from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
PIPELINE_DIR = WEIGHTS_DIR / "pipeline"
TOYCLIP_WEIGHTS = WEIGHTS_DIR / "toyclip.safetensors"
TOY_MODEL_ID = "toy"


def shipped_available() -> bool:
    return (PIPELINE_DIR / "model_index.json").exists() and TOYCLIP_WEIGHTS.exists()


def load_toy_pipeline(path: str | Path | None = None, dtype=None, device: str = "cpu"):
    """Load the shipped toy StableDiffusionPipeline (offline, fp32 by default)."""
    import torch
    from diffusers import StableDiffusionPipeline

    p = Path(path) if path else PIPELINE_DIR
    if not (p / "model_index.json").exists():
        raise FileNotFoundError(f"no toy pipeline at {p}: rebuild it with `semu-toy train --out DIR`")
    pipe = StableDiffusionPipeline.from_pretrained(p, torch_dtype=dtype or torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_toyclip(path: str | Path | None = None, device: str = "cpu"):
    """Load the toy open_clip model (model, tokenizer) in fp32, eval mode."""
    import open_clip
    from safetensors.torch import load_file

    from .models import build_toyclip, register_toyclip_config

    p = Path(path) if path else TOYCLIP_WEIGHTS
    if not p.exists():
        raise FileNotFoundError(f"no toy-CLIP weights at {p}: rebuild them with `semu-toy train --out DIR`")
    model = build_toyclip()
    model.load_state_dict({k: v.float() for k, v in load_file(str(p)).items()})
    tok = open_clip.get_tokenizer(register_toyclip_config())
    return model.to(device).eval().requires_grad_(False), tok
