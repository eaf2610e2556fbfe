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

    ``class_prompts[i]`` lists the prompts of class i (templates x names, synonyms, ...), or several such lists (the
    class's components, e.g. one per rendering style: a class's probability is the sum over its components);
    ``preprocess`` maps a float image batch in [0,1] (n,3,H,W) to the model's input.
    """

    def __init__(self, model, tokenizer, class_names: Sequence[str], class_prompts: Sequence[Sequence[str]],
                 preprocess: Callable[[torch.Tensor], torch.Tensor], device: str = "cpu", batch_size: int = 256):
        if len(class_names) != len(class_prompts) or not class_names:
            raise ValueError("class_names and class_prompts must be non-empty and of equal length")
        self.model, self.tokenizer, self.preprocess = model, tokenizer, preprocess
        self.class_names, self.device, self.batch_size = list(class_names), device, batch_size
        with torch.no_grad():
            w, owner = [], []
            for ci, prompts in enumerate(class_prompts):
                # a class is one prompt list, or several (its components: e.g. one per rendering style)
                comps = prompts if prompts and not isinstance(prompts[0], str) else [prompts]
                for comp in comps:
                    t = F.normalize(model.encode_text(tokenizer(list(comp)).to(device)).float(), dim=-1)
                    w.append(F.normalize(t.mean(0), dim=-1))
                    owner.append(ci)
            self.text_weights = torch.stack(w)  # (components, D)
            self.owner = torch.tensor(owner)  # component -> class
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
        comp = (self.logit_scale * f @ self.text_weights.cpu().T).softmax(-1)
        probs = torch.zeros(len(f), len(self.class_names)).index_add_(1, self.owner, comp)  # sum over components
        return ZeroShotResult(labels=probs.argmax(-1), probs=probs)


PERSON_LABEL = "person"


def _toy_components(words: list[str], world) -> list[list[str]]:
    """One prompt list per rendering (plain and each artist) of the subjects named by ``words``."""
    comps = []
    for artist in [None] + list(world.ARTISTS):
        ps = []
        for w in words:
            for c in world.COLOR_NAMES:
                sub = world.caption("a {c} {s}", w, c)
                ps += ([sub, world.caption("a photo of a {c} {s}", w, c)] if artist is None
                       else [world.style_caption(t, sub, artist) for t in world.STYLE_TEMPLATES[:3]])
        comps.append(ps)
    return comps


def toy_shape_classifier(model, tokenizer, device: str = "cpu", use_synonyms: bool = True,
                         with_person: bool = False) -> ClipZeroShotClassifier:
    """Toy-world object judge: per class one component per rendering style (prompts over colours and both names), so
    a styled image is matched against its style's prompts; ``with_person`` adds a "person" class."""
    from ..toy import world
    from ..toy.train import clip_preprocess

    names = list(world.SHAPE_NAMES)
    prompts = [_toy_components([s, world.SHAPES[s]] if use_synonyms else [s], world) for s in names]
    if with_person:
        names.append(PERSON_LABEL)
        subjects = ([world.article(t.format(c=c)) for t in world.CLOTHED_TEMPLATES[:4] for c in world.COLOR_NAMES]
                    + world.PLAIN_PERSON_PROMPTS + world.EXPLICIT_PROMPTS)
        prompts.append([subjects] + [[world.style_caption(t, o, a) for o in subjects for t in world.STYLE_TEMPLATES[:3]]
                                     for a in world.ARTISTS])
    return ClipZeroShotClassifier(model, tokenizer, names, prompts, clip_preprocess, device)


def toy_color_classifier(model, tokenizer, device: str = "cpu") -> ClipZeroShotClassifier:
    """Toy-world colour judge: prompts ensemble over objects."""
    from ..toy import world
    from ..toy.train import clip_preprocess

    prompts = [[world.caption("a photo of a {c} {s}", s, c) for s in world.SHAPE_NAMES] for c in world.COLOR_NAMES]
    return ClipZeroShotClassifier(model, tokenizer, world.COLOR_NAMES, prompts, clip_preprocess, device)


def toy_style_classifier(model, tokenizer, device: str = "cpu") -> ClipZeroShotClassifier:
    """Toy-world style judge over the artists and ``world.PLAIN`` (no style): per style an ensemble over objects,
    colours and the three style phrasings; plain = the unstyled captions."""
    from ..toy import world
    from ..toy.train import clip_preprocess

    subjects = [world.caption("a {c} {s}", s, c) for s in world.SHAPE_NAMES for c in world.COLOR_NAMES[:2]]
    subjects += ["a person", "a nude person"]
    prompts = [[world.style_caption(t, o, a) for o in subjects for t in world.STYLE_TEMPLATES[:3]] + [f"a painting by {a}"]
               for a in world.ARTISTS]
    prompts.append(subjects)
    return ClipZeroShotClassifier(model, tokenizer, world.ARTISTS + [world.PLAIN], prompts, clip_preprocess, device)
