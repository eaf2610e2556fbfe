"""Streaming generation with an on-disk image cache: one PNG per image, written atomically, keyed by everything
that determines the pixels (key.json). A batch whose PNGs all exist is read back instead of generated, so an
interrupted run resumes where it stopped; no more than one batch of images is in memory at a time."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from .. import atomic


class ImageCache:
    def __init__(self, folder: Path, key: dict):
        self.folder, self.key = Path(folder), key

    def prepare(self) -> None:
        """(main process) drop images made under another key, record this key."""
        self.folder.mkdir(parents=True, exist_ok=True)
        kf = self.folder / "key.json"
        if kf.exists():
            try:
                old = json.loads(kf.read_text())
            except ValueError:
                old = None
            if old != self.key:
                for f in self.folder.glob("*.png"):
                    f.unlink()
        atomic.write_json(kf, self.key, indent=1)

    def path(self, item) -> Path:
        return self.folder / f"{item.index:05d}_{item.seed}.png"

    def has(self, batch) -> bool:
        return all(self.path(it).exists() for it in batch)

    def load(self, batch) -> np.ndarray:
        from PIL import Image

        out = []
        for it in batch:
            with Image.open(self.path(it)) as im:
                out.append(np.asarray(im.convert("RGB")))
        return np.stack(out)

    def save(self, batch, images: np.ndarray) -> None:
        from PIL import Image

        for it, im in zip(batch, images):
            p = self.path(it)
            with atomic.atomic_path(p) as tmp:
                Image.fromarray(im).save(tmp)


@torch.no_grad()
def generate_batch(pipe, batch, steps: int) -> np.ndarray:
    """One batch of items sharing guidance and size; image i depends on its own seed (one CPU generator per image)."""
    h, w, g = batch[0].height, batch[0].width, batch[0].guidance
    f = pipe.vae_scale_factor
    lat = torch.stack([torch.randn((pipe.unet.config.in_channels, h // f, w // f),
                                   generator=torch.Generator("cpu").manual_seed(int(it.seed))) for it in batch])
    lat = lat.to(pipe.unet.device, pipe.unet.dtype)
    r = pipe([it.prompt for it in batch], latents=lat, num_inference_steps=steps, guidance_scale=g, height=h, width=w,
             output_type="np")
    return (np.clip(np.asarray(r.images, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
