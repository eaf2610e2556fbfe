"""CLIP score: prompt-image alignment, 100 * max(cos(image, text), 0), averaged (torchmetrics' definition)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def clip_score_from_features(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Per-pair CLIP scores (n,) from paired image and text features."""
    cos = (F.normalize(image_features.float(), dim=-1) * F.normalize(text_features.float(), dim=-1)).sum(-1)
    return 100 * cos.clamp(min=0)


class ClipScore:
    def __init__(self, model, tokenizer, preprocess, device: str = "cpu"):
        self.model, self.tokenizer, self.preprocess, self.device = model, tokenizer, preprocess, device
        self.scores: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, images01: torch.Tensor, prompts: Sequence[str]) -> None:
        for i in range(0, len(prompts), 256):
            x = self.preprocess(images01[i : i + 256].to(self.device).float())
            fi = self.model.encode_image(x)
            ft = self.model.encode_text(self.tokenizer(list(prompts[i : i + 256])).to(self.device))
            self.scores.append(clip_score_from_features(fi, ft).cpu())

    def compute(self) -> float:
        return float(torch.cat(self.scores).mean()) if self.scores else float("nan")
