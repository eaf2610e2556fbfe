"""Load a CLIP model (the toy-world CLIP or any open_clip model) as (model, tokenizer, preprocess01) offline."""
from __future__ import annotations

import torch

from .errors import JudgeUnavailable


def default_pretrained(model: str) -> str | None:
    import open_clip

    try:
        tags = open_clip.list_pretrained_tags_by_model(model)
    except Exception:
        tags = []
    return tags[0] if tags else None


def load_clip(model: str = "toy", pretrained: str | None = None, device: str = "cpu", random_init: bool = False):
    """-> (model, tokenizer, preprocess) where preprocess maps float images (n,3,H,W) in [0,1] to the model's input.

    ``random_init`` builds the architecture with random weights (tests). Missing weights offline raise a one-line
    :class:`JudgeUnavailable` naming the model and tag."""
    if model == "toy":
        from ..toy import load_toyclip
        from ..toy.train import clip_preprocess

        m, tok = load_toyclip(device=device)
        return m.eval(), tok, clip_preprocess
    try:
        import open_clip
    except ImportError:
        raise JudgeUnavailable("CLIP judges need open_clip: pip install open_clip_torch") from None
    if model not in open_clip.list_models() and not model.startswith("hf-hub:"):
        raise JudgeUnavailable(f"open_clip has no model {model!r}: see open_clip.list_models()")
    tag = None if random_init else (pretrained or (None if model.startswith("hf-hub:") else default_pretrained(model)))
    if not random_init and tag is None and not model.startswith("hf-hub:"):
        raise JudgeUnavailable(f"open_clip model {model} has no pretrained weights listed: name them as {model}:<pretrained>")
    import logging

    logging.disable(logging.ERROR)  # open_clip logs its failed download attempts; the one-line error below says it
    try:
        m, _, pre = open_clip.create_model_and_transforms(model, pretrained=tag, device=device)
    except Exception as e:
        raise JudgeUnavailable(f"the weights of open_clip {model} ({tag}) are not in the local cache "
                               f"({type(e).__name__}): download them on a connected machine (open_clip."
                               f"create_model_and_transforms('{model}', pretrained='{tag}')) or use the toy judge") from None
    finally:
        logging.disable(logging.NOTSET)
    norm = [t for t in pre.transforms if hasattr(t, "mean") and hasattr(t, "std")][-1]
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    size = m.visual.image_size if isinstance(m.visual.image_size, int) else m.visual.image_size[0]

    def preprocess(x01: torch.Tensor) -> torch.Tensor:
        x01 = torch.nn.functional.interpolate(x01, size=size, mode="bicubic", antialias=True, align_corners=False)
        return (x01.clamp(0, 1) - mean.to(x01.device)) / std.to(x01.device)

    return m.eval(), open_clip.get_tokenizer(model), preprocess
