"""Streaming generation with an on-disk image cache: one PNG per image, written atomically, keyed by everything
that determines the pixels (key.json). A batch whose PNGs all exist is read back instead of generated, so an
interrupted run resumes where it stopped; no more than one batch of images is in memory at a time."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from .. import atomic


class ImageCache:
    """PNGs under ``folder`` with an index (``index/<image>.sha256``: each image's SHA-256, written after it), so an
    image edited or swapped on disk is noticed and its batch generated again (with a warning)."""

    def __init__(self, folder: Path, key: dict, log=print):
        self.folder, self.key, self.log = Path(folder), key, log

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
                for f in [*self.folder.glob("*.png"), *self.index.glob("*.sha256")]:
                    f.unlink()
        atomic.write_json(kf, self.key, indent=1)

    @property
    def index(self) -> Path:
        return self.folder / "index"

    def path(self, item) -> Path:
        return self.folder / f"{item.index:05d}_{item.seed}.png"

    def _hash_path(self, item) -> Path:
        return self.index / f"{self.path(item).stem}.sha256"

    def load(self, batch) -> np.ndarray | None:
        """The cached images of ``batch``, or None (generate it) when one is missing or differs from the hash the
        index recorded for it (edited, swapped, or cached by a version without the index): then with a warning."""
        from PIL import Image

        out = []
        for it in batch:
            p, h = self.path(it), self._hash_path(it)
            if not p.exists():
                return None
            data = p.read_bytes()
            want = h.read_text().strip() if h.exists() else None
            if want != hashlib.sha256(data).hexdigest():
                self.log(f"semu-eval: warning: cached image {p} " + ("has no recorded hash" if want is None else
                         "does not match the hash recorded in the cache index (edited or swapped)")
                         + ": generating its batch again")
                return None
            with Image.open(io.BytesIO(data)) as im:
                out.append(np.asarray(im.convert("RGB")))
        return np.stack(out)

    def save(self, batch, images: np.ndarray) -> None:
        from PIL import Image

        self.index.mkdir(parents=True, exist_ok=True)
        for it, im in zip(batch, images):
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format="PNG")
            data = buf.getvalue()
            atomic.write_bytes(self.path(it), data)
            atomic.write_text(self._hash_path(it), hashlib.sha256(data).hexdigest())


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
