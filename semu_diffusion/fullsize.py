"""Randomly initialised full-size SD-1.5 / SD-2.1 / SDXL pipelines from the real public configs shipped in
pipelines/configs (no weights needed): cost does not depend on weight values."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .recipes import all_recipes


def _cfg(family: str, part: str) -> dict:
    d = all_recipes()[family].config_dir()
    return {k: v for k, v in json.loads((d / f"{part}.json").read_text()).items() if not k.startswith("_")}


def build_random_pipeline(family: str, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0):
    """A diffusers pipeline of the family's real architecture with random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from .toy.models import SCHEDULER_CONFIG
    from .toy.tokenizer import write_clip_tokenizer_files

    if family not in ("sd15", "sd21", "sdxl"):
        raise ValueError(f"unknown full-size family {family!r}: use sd15, sd21 or sdxl")
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**_cfg(family, "unet")).to(dtype)
        vae = AutoencoderKL(**_cfg(family, "vae")).to(dtype)
        te = CLIPTextModel(CLIPTextConfig(**_cfg(family, "text_encoder"))).to(dtype)
    import tempfile

    tok_dir = write_clip_tokenizer_files(Path(tempfile.mkdtemp(prefix="semu-tok-")), 77)
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    sched = DDIMScheduler(**SCHEDULER_CONFIG)
    if family == "sdxl":
        with torch.device(device):
            te2 = CLIPTextModelWithProjection(CLIPTextConfig(**_cfg(family, "text_encoder_2"))).to(dtype)
        return StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                         unet=unet, scheduler=sched)
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def save_random_pipeline(family: str, out_dir: str | Path, dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """Write a random full-size pipeline as a local diffusers folder (fp16 by default: SD-1.5 is ~2 GB)."""
    pipe = build_random_pipeline(family, dtype=torch.float32, seed=seed)
    pipe.to(dtype=dtype)
    out = Path(out_dir)
    pipe.save_pretrained(out, safe_serialization=True)
    return out
