"""Batched, seeded image generation with a diffusers pipeline (one generator per image: paired comparisons)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 5.0
DEFAULT_BATCH = 64


def generate(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int = DEFAULT_STEPS,
             guidance_scale: float = DEFAULT_GUIDANCE, batch_size: int = DEFAULT_BATCH, output_type: str = "np",
             progress: bool = True, desc: str = "generate", height: int | None = None,
             prompt_embeds: torch.Tensor | None = None):
    """Generate one image per (prompt, seed). Returns uint8 (n,H,W,3) for output_type="np", latents for "latent".

    Image i depends only on (prompts[i], seeds[i]) and the model, not on the batch it lands in.
    ``prompt_embeds`` (1, L, D): one text conditioning for every image instead of the prompts' (the prompts then
    only count the images; the negative side stays the empty prompt's).
    """
    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds must have the same length")
    device = pipe.unet.device
    outs = []
    it = range(0, len(prompts), batch_size)
    for i in tqdm(it, desc=desc, disable=not progress, dynamic_ncols=True):
        p = list(prompts[i : i + batch_size])
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[i : i + batch_size]]
        h = w = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
        lat = torch.stack([torch.randn((pipe.unet.config.in_channels, h // pipe.vae_scale_factor, w // pipe.vae_scale_factor),
                                       generator=g) for g in gens]).to(device, pipe.unet.dtype)
        kw = {"prompt": p} if prompt_embeds is None else {
            "prompt_embeds": prompt_embeds.to(device, pipe.unet.dtype).expand(len(p), -1, -1)}
        with torch.no_grad():
            r = pipe(latents=lat, num_inference_steps=steps, guidance_scale=guidance_scale,
                     output_type="latent" if output_type == "latent" else "np", height=h, width=w, **kw)
        x = r.images
        if output_type == "latent":
            outs.append(x.float().cpu())
        else:
            outs.append((np.clip(np.asarray(x), 0, 1) * 255).round().astype(np.uint8))
    if output_type == "latent":
        return torch.cat(outs)
    return np.concatenate(outs)
