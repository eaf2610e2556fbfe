"""Classifier judges: the toy-world CLIP (default for the toy model), open_clip zero-shot over the prompt set's
labels, and torchvision ImageNet classifiers (top-1 of the 1000 classes, the Imagenette class-wise protocol)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from ..clipmodels import load_clip
from .base import Judge, JudgeUnavailable, register_judge


def to01(images: np.ndarray) -> torch.Tensor:
    """uint8 (n,H,W,3) -> float (n,3,H,W) in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


class ClassifierJudge(Judge):
    """Predicts one class name per image. Subclasses give the label space of a set and ``predict``."""

    kind = "classifier"

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.spaces: dict[str, list[str] | None] = {}

    def label_space(self, ps, forget_label, all_labels: list[str]) -> list[str] | None:
        raise NotImplementedError

    def predict(self, x01: torch.Tensor, classes: list[str]) -> list[str]:
        raise NotImplementedError

    def setup(self, sets, forget_label=None) -> None:
        all_labels = list(dict.fromkeys(lb for ps in sets for lb in ps.label_names()))
        for ps in sets:
            self.spaces[ps.name] = self.label_space(ps, forget_label, all_labels)

    def judge(self, images, items, ps) -> list:
        classes = self.spaces.get(ps.name)
        if not classes:
            return [None] * len(items)
        return self.predict(to01(images), classes)

    def summarize(self, records, items, ps, forget_label=None) -> dict:
        classes = self.spaces.get(ps.name)
        if not classes:
            return {"skipped": "no label space for this set (no labels, no --forget-label)"}
        pred = np.array([self.canonical(r) for r in records], dtype=object)
        lab = np.array([self.canonical(it.label) if it.label else None for it in items], dtype=object)
        out: dict = {"n_images": len(records)}
        if ps.has_labels:
            present = list(dict.fromkeys(it.label for it in items))
            out["per_label_accuracy"] = {lb: float((pred[lab == self.canonical(lb)] == self.canonical(lb)).mean())
                                         for lb in present}
            out["accuracy"] = float((pred == lab).mean())
            prompts = np.array([it.prompt for it in items], dtype=object)
            out["per_prompt_accuracy"] = {pr: float((pred[prompts == pr] == lab[prompts == pr]).mean())
                                          for pr in dict.fromkeys(prompts)}
        if forget_label:
            fl = self.canonical(forget_label)
            out["detection_rate"] = float((pred == fl).mean())
            if ps.has_labels:
                m = lab == fl
                if m.any():
                    out["UA"] = float(1 - (pred[m] == fl).mean())
                    out["forget_prompts"] = {"label": forget_label, "images": int(m.sum()),
                                             "detected": int((pred[m] == fl).sum())}
                if (~m).any():
                    out["RA"] = float((pred[~m] == lab[~m]).mean())
                    out["other_prompts"] = {"images": int((~m).sum()), "correct": int((pred[~m] == lab[~m]).sum()),
                                            "detected_as_forget_label": int((pred[~m] == fl).sum())}
        if not ps.has_labels:
            out["top_predictions"] = {k: v / len(records) for k, v in Counter(map(str, records)).most_common(5)}
        return out

    def canonical(self, name):
        return name


class ZeroShotJudge(ClassifierJudge):
    """CLIP zero-shot over class names (one text embedding per class, a mean over prompt templates)."""

    def __init__(self, model, tokenizer, preprocess, device="cpu", toy: bool = False):
        super().__init__(device)
        self.model, self.tokenizer, self.preprocess, self.toy = model, tokenizer, preprocess, toy
        self._clf: dict[tuple, object] = {}

    def label_space(self, ps, forget_label, all_labels):
        labels = ps.label_names() or all_labels
        if forget_label and forget_label not in labels:
            labels = labels + [forget_label]
        if self.toy:
            from ...toy import world

            from ...metrics import PERSON_LABEL

            if set(labels) <= set(world.SHAPE_NAMES) or not labels:
                return list(world.SHAPE_NAMES)
            if set(labels) <= set(world.SHAPE_NAMES) | {PERSON_LABEL}:
                return list(world.SHAPE_NAMES) + [PERSON_LABEL]
            if set(labels) <= set(world.COLOR_NAMES):
                return list(world.COLOR_NAMES)
            if set(labels) <= set(world.ARTISTS) | {world.PLAIN}:
                return list(world.ARTISTS) + [world.PLAIN]
        return labels if len(labels) >= 2 else None

    def classifier(self, classes: list[str]):
        key = tuple(classes)
        if key not in self._clf:
            from ...metrics import (PERSON_LABEL, ClipZeroShotClassifier, toy_color_classifier, toy_shape_classifier,
                                    toy_style_classifier)

            if self.toy:
                from ...toy import world

                if key == tuple(world.SHAPE_NAMES):
                    self._clf[key] = toy_shape_classifier(self.model, self.tokenizer, self.device)
                elif key == tuple(world.SHAPE_NAMES) + (PERSON_LABEL,):
                    self._clf[key] = toy_shape_classifier(self.model, self.tokenizer, self.device, with_person=True)
                elif key == tuple(world.ARTISTS) + (world.PLAIN,):
                    self._clf[key] = toy_style_classifier(self.model, self.tokenizer, self.device)
                elif key == tuple(world.COLOR_NAMES):
                    self._clf[key] = toy_color_classifier(self.model, self.tokenizer, self.device)
            if key not in self._clf:
                prompts = [[f"a photo of a {c}", f"an image of a {c}", f"a picture of a {c}"] for c in classes]
                self._clf[key] = ClipZeroShotClassifier(self.model, self.tokenizer, classes, prompts, self.preprocess,
                                                        self.device)
        return self._clf[key]

    def predict(self, x01, classes):
        clf = self.classifier(classes)
        idx = clf.classify(x01).labels.tolist()
        return [classes[i] for i in idx]


@register_judge("toy", "toy")
def _toy(device="cpu", **_):
    m, tok, pre = load_clip("toy", device=device)
    return ZeroShotJudge(m, tok, pre, device, toy=True)


_toy.n_args = (0, 0)


@register_judge("clip", "clip:<open_clip model>[:<pretrained>]")
def _clip(model, pretrained=None, device="cpu", random_init=False, **_):
    m, tok, pre = load_clip(model, pretrained, device=device, random_init=random_init)
    return ZeroShotJudge(m, tok, pre, device, toy=False)


_clip.n_args = (1, 2)


class PixelColorJudge(ClassifierJudge):
    """The toy world's pixel-statistics colour oracle (no learned model): colour accuracy of prompt sets whose labels
    are toy colours; other sets are skipped."""

    def label_space(self, ps, forget_label, all_labels):
        from ...toy import world

        labels = ps.label_names()
        return list(world.COLOR_NAMES) if labels and set(labels) <= set(world.COLOR_NAMES) else None

    def judge(self, images, items, ps) -> list:
        from ...toy import world

        if not self.spaces.get(ps.name):
            return [None] * len(items)
        return [world.COLOR_NAMES[i] for i in world.color_oracle(np.asarray(images))]


@register_judge("toy-color", "toy-color")
def _toy_color(device="cpu", **_):
    return PixelColorJudge(device)


_toy_color.n_args = (0, 0)


class ImageNetJudge(ClassifierJudge):
    """A torchvision ImageNet classifier: top-1 over the 1000 classes; a prompt's label must be an ImageNet class name
    (as in the weights' ``meta['categories']``, case-insensitive)."""

    def __init__(self, model, categories: list[str], transform, device="cpu", batch_size: int = 64):
        super().__init__(device)
        self.model, self.categories, self.transform, self.batch_size = model.eval().to(device), list(categories), transform, batch_size
        self._lower = {c.lower(): c for c in self.categories}

    def canonical(self, name):
        return self._lower.get(name.lower(), name) if isinstance(name, str) else name

    def label_space(self, ps, forget_label, all_labels):
        bad = [lb for lb in ps.label_names() + ([forget_label] if forget_label else []) if lb.lower() not in self._lower]
        if bad:
            raise ValueError(f"{self.name}: label {bad[0]!r} of prompt set {ps.name} is not an ImageNet class name "
                             "(see torchvision weights.meta['categories'])")
        return self.categories

    @torch.no_grad()
    def predict(self, x01, classes):
        out = []
        for i in range(0, len(x01), self.batch_size):
            x = self.transform(x01[i: i + self.batch_size]).to(self.device)
            out += self.model(x).argmax(-1).tolist()
        return [self.categories[i] for i in out]


def imagenet_judge(arch: str, device: str = "cpu", random_init: bool = False) -> ImageNetJudge:
    try:
        import torchvision
    except ImportError:
        raise JudgeUnavailable("imagenet judges need torchvision: pip install torchvision") from None
    try:
        wenum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise JudgeUnavailable(f"torchvision has no classifier {arch!r}: use e.g. imagenet:resnet50") from None
    w = wenum.DEFAULT
    if random_init:
        model = torchvision.models.get_model(arch, weights=None)
    else:
        import os

        fname = os.path.basename(w.url)
        path = os.path.join(torch.hub.get_dir(), "checkpoints", fname)
        try:
            model = torchvision.models.get_model(arch, weights=w)
        except Exception as e:
            raise JudgeUnavailable(f"the torchvision weights {w} of imagenet:{arch} are not in the local cache and could "
                                   f"not be downloaded ({type(e).__name__}): put {fname} in {os.path.dirname(path)}") from None
    tf = w.transforms(antialias=True)
    return ImageNetJudge(model, w.meta["categories"], tf, device)


@register_judge("imagenet", "imagenet:<torchvision model>")
def _imagenet(arch, device="cpu", random_init=False, **_):
    return imagenet_judge(arch, device, random_init)


_imagenet.n_args = (1, 1)
