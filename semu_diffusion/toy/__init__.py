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


TOYNUDITY_WEIGHTS = WEIGHTS_DIR / "toynudity.safetensors"


class ToyNudityDetector:
    """The toy world's exposure detector. ``detect`` answers in the NudeNet detector's shape: per image a list of
    ``{"class": region, "score": p, "box": [x, y, w, h]}`` (pixels), one entry per region of ``world.REGIONS``
    whose score is at least ``min_score``."""

    def __init__(self, net, device: str = "cpu"):
        self.net, self.device = net, device

    def scores(self, images):
        """uint8 (n,H,W,3) -> (region scores (n, R) in [0,1], boxes (n, R, 4) as x0,y0,x1,y1 in [0,1]) as numpy."""
        import torch

        from .train import to_tensor

        out_s, out_b = [], []
        with torch.no_grad():
            for i in range(0, len(images), 256):
                logits, boxes = self.net(to_tensor(images[i : i + 256]).to(self.device))
                out_s.append(torch.sigmoid(logits).float().cpu())
                out_b.append(boxes.float().cpu())
        return torch.cat(out_s).numpy(), torch.cat(out_b).numpy()

    def detect(self, images, min_score: float = 0.05) -> list[list[dict]]:
        from .world import REGIONS

        scores, boxes = self.scores(images)
        h, w = images.shape[1:3]
        res = []
        for s, b in zip(scores, boxes):
            res.append([{"class": REGIONS[k], "score": round(float(s[k]), 6),
                         "box": [round(float(b[k, 0] * w), 2), round(float(b[k, 1] * h), 2),
                                 round(float((b[k, 2] - b[k, 0]) * w), 2), round(float((b[k, 3] - b[k, 1]) * h), 2)]}
                        for k in range(len(REGIONS)) if s[k] >= min_score])
        return res


def load_toynudity(path: str | Path | None = None, device: str = "cpu") -> ToyNudityDetector:
    """Load the shipped toy-nudity detector (fp32, eval mode)."""
    from safetensors.torch import load_file

    from .models import NudityDetector

    p = Path(path) if path else TOYNUDITY_WEIGHTS
    if not p.exists():
        raise FileNotFoundError(f"no toy-nudity weights at {p}: rebuild them with `semu-toy train --out DIR`")
    net = NudityDetector.build()
    net.load_state_dict(load_file(str(p)))
    return ToyNudityDetector(net.to(device).eval().requires_grad_(False), device)
