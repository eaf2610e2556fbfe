"""CLIP zero-shot classifier on open_clip models (any open_clip model, or the toy-world CLIP)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


@dataclass
class ZeroShotResult:
    labels: torch.Tensor  # (n,) predicted class index
    probs: torch.Tensor  # (n, n_classes)


class ClipZeroShotClassifier:
    """Zero-shot image classifier: one text embedding per class, the mean over its prompts.

    ``class_prompts[i]`` lists the prompts of class i (templates x names, synonyms, ...);
    ``preprocess`` maps a float image batch in [0,1] (n,3,H,W) to the model's input.
    """

    def __init__(self, model, tokenizer, class_names: Sequence[str], class_prompts: Sequence[Sequence[str]],
                 preprocess: Callable[[torch.Tensor], torch.Tensor], device: str = "cpu", batch_size: int = 256):
        if len(class_names) != len(class_prompts) or not class_names:
            raise ValueError("class_names and class_prompts must be non-empty and of equal length")
        self.model, self.tokenizer, self.preprocess = model, tokenizer, preprocess
        self.class_names, self.device, self.batch_size = list(class_names), device, batch_size
        with torch.no_grad():
            w = []
            for prompts in class_prompts:
                t = F.normalize(model.encode_text(tokenizer(list(prompts)).to(device)).float(), dim=-1)
                w.append(F.normalize(t.mean(0), dim=-1))
            self.text_weights = torch.stack(w)  # (C, D)
            self.logit_scale = float(model.logit_scale.exp().item()) if hasattr(model, "logit_scale") else 100.0

    @torch.no_grad()
    def image_features(self, images01: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(images01), self.batch_size):
            x = self.preprocess(images01[i : i + self.batch_size].to(self.device).float())
            out.append(F.normalize(self.model.encode_image(x).float(), dim=-1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def classify(self, images01: torch.Tensor) -> ZeroShotResult:
        f = self.image_features(images01)
        probs = (self.logit_scale * f @ self.text_weights.cpu().T).softmax(-1)
        return ZeroShotResult(labels=probs.argmax(-1), probs=probs)


def toy_shape_classifier(model, tokenizer, device: str = "cpu", use_synonyms: bool = True) -> ClipZeroShotClassifier:
    """Toy-world shape judge: prompts ensemble over colours (and synonyms)."""
    from ..toy import world
    from ..toy.train import clip_preprocess

    prompts = []
    for s in world.SHAPE_NAMES:
        words = [s, world.SHAPES[s]] if use_synonyms else [s]
        prompts.append([world.caption(t, w, c) for w in words for t in ("a photo of a {c} {s}", "a {c} {s}") for c in world.COLOR_NAMES]
                       + [world.caption("a photo of a {s}", w, None) for w in words])
    return ClipZeroShotClassifier(model, tokenizer, world.SHAPE_NAMES, prompts, clip_preprocess, device)


def toy_color_classifier(model, tokenizer, device: str = "cpu") -> ClipZeroShotClassifier:
    """Toy-world colour judge: prompts ensemble over shapes."""
    from ..toy import world
    from ..toy.train import clip_preprocess

    prompts = [[world.caption("a photo of a {c} {s}", s, c) for s in world.SHAPE_NAMES] for c in world.COLOR_NAMES]
    return ClipZeroShotClassifier(model, tokenizer, world.COLOR_NAMES, prompts, clip_preprocess, device)
