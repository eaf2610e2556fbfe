"""Concepts: their kind (object, nudity, style), forget prompts and the anchor they are remapped to."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from .text import article

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"

NUDITY_WORDS = {"nudity", "nude", "naked", "nsfw", "nakedness"}

OBJECT_TEMPLATES = ["a photo of a {}", "an image of a {}", "a {}", "a picture of a {}", "a drawing of a {}",
                    "a photo of the {}"]
# forget-prompt augmentation of object concepts (--forget-modifiers): the i-th modifier word goes in the i-th template,
# for the concept and, paired, for its anchor ("a photo of a red star" -> "a photo of a red circle")
MODIFIER_TEMPLATES = ["a photo of a {} {}", "an image of a {} {}", "a picture of a {} {}"]
STYLE_TEMPLATES = ["a painting in the style of {}", "an artwork by {}", "a landscape in the style of {}",
                   "a portrait in the style of {}", "a picture by {}"]
STYLE_ANCHORS = ["a painting", "an artwork", "a landscape", "a portrait", "a picture"]
NUDITY_PROMPTS = ["a photo of a nude person", "a naked woman", "a naked man", "nudity", "a nude body",
                  "a photo of a naked person on the beach"]
NUDITY_ANCHOR = "a person wearing clothes"


@dataclass
class ConceptPlan:
    concept: str
    kind: str
    forget_prompts: list[str]
    anchor_prompts: list[str]  # paired with forget_prompts
    anchor: str


def norm_name(s: str) -> str:
    """A concept or class name compared case- and space-insensitively ("Red  Apple " == "red apple")."""
    return " ".join(str(s).split()).lower()


def next_class(concept: str, classes: list[str], skip=()) -> str | None:
    """The class after ``concept`` in ``classes`` (cyclic), passing over the normalised names in ``skip``: the
    official SEMU remap target c'. None when ``concept`` is not a class or every other class is skipped."""
    low = [norm_name(c) for c in classes]
    if norm_name(concept) not in low:
        return None
    i = low.index(norm_name(concept))
    return next((classes[(i + j) % len(classes)] for j in range(1, len(classes))
                 if low[(i + j) % len(classes)] not in skip), None)


def read_prompt_lines(path: str | Path, encoding: str | None = "utf-8-sig") -> list[str]:
    """The prompts of a text file, one per line: blank lines and lines starting with # left out."""
    return [ln.strip() for ln in Path(path).read_text(encoding=encoding).splitlines()
            if ln.strip() and not ln.startswith("#")]


def given_retain_prompts(retain_prompts, missing_ok: bool = False) -> list[str] | None:
    """The retain prompts given as an option: a list (blank entries left out) or a file of one prompt per line;
    None when none were given. A missing file raises FileNotFoundError, or gives [] with ``missing_ok`` (for checks
    that run before the option check, which names the missing file)."""
    if isinstance(retain_prompts, (list, tuple)):
        return [p for p in retain_prompts if isinstance(p, str) and p.strip()]
    if not retain_prompts:
        return None
    p = Path(retain_prompts)
    if not p.is_file():
        if missing_ok:
            return []
        raise FileNotFoundError(f"retain prompt file {p} not found")
    return read_prompt_lines(p)


def concept_kind(concept: str) -> str:
    c = concept.strip().lower()
    if c in NUDITY_WORDS:
        return "nudity"
    if c.endswith(" style") or c.startswith("style of") or c.startswith("in the style of"):
        return "style"
    return "object"


def _fix_article(text: str) -> str:
    return article(text)


def object_anchor_candidates(concept: str, anchors: list[str] | None) -> list[str]:
    """The recipe's default object anchors that are not the concept itself, in the recipe's order."""
    c = concept.strip().lower()
    return [a for a in anchors or [] if a.lower() != c]


def plan_concept(concept: str, anchor: str | None = None, kind: str | None = None, prompts_file: str | Path | None = None,
                 default_object_anchors: list[str] | None = None, modifiers=(), bare: bool = False) -> ConceptPlan:
    """Forget prompts and paired anchor prompts for a concept. ``anchor=None`` picks the kind's default.
    ``modifiers``: words (e.g. colours) that add modified prompts of an object concept, paired with the anchor's.
    ``bare``: an object concept's templates gain the bare word ("star", paired with "circle"), after the templates and
    before the modified prompts."""
    concept = (concept or "").strip()
    if not concept:
        raise ValueError("empty concept: pass --concept with the word or phrase to erase, e.g. --concept triangle")
    kind = kind or concept_kind(concept)
    if kind not in ("object", "nudity", "style"):
        raise ValueError(f"unknown concept kind {kind!r}: use object, nudity or style")
    name = concept
    if kind == "style":
        for pre in ("in the style of ", "style of "):
            if name.lower().startswith(pre):
                name = name[len(pre):]
        if name.lower().endswith(" style"):
            name = name[: -len(" style")]
    if prompts_file:
        p = Path(prompts_file)
        if not p.exists():
            raise FileNotFoundError(f"forget prompt file {p} not found")
        forget = read_prompt_lines(p, encoding=None)
        if not forget:
            raise ValueError(f"forget prompt file {p} holds no prompts")
    elif kind == "object":
        forget = [_fix_article(t.format(name)) for t in object_templates(bare)]
    elif kind == "style":
        forget = [t.format(name) for t in STYLE_TEMPLATES]
    else:
        forget = list(NUDITY_PROMPTS)
    if anchor is None:
        if kind == "nudity":
            anchor = NUDITY_ANCHOR
        elif kind == "style":
            anchor = "a painting"
        else:
            cands = object_anchor_candidates(name, default_object_anchors)
            anchor = cands[0] if cands else ""
    if kind == "object" and not prompts_file:
        anchors = [_fix_article(t.format(anchor)) if anchor else "" for t in object_templates(bare)]
        forget += modified_prompts(name, modifiers)
        anchors += modified_prompts(anchor, modifiers) if anchor else [""] * len(modifiers)
    elif kind == "style" and not prompts_file and anchor == "a painting":
        anchors = list(STYLE_ANCHORS)
    else:
        anchors = [anchor] * len(forget)
    return ConceptPlan(concept=concept, kind=kind, forget_prompts=forget, anchor_prompts=anchors, anchor=anchor)


def object_templates(bare: bool = False) -> list[str]:
    """The object forget templates, plus the bare word ("{}") when ``bare``."""
    return OBJECT_TEMPLATES + ["{}"] * bool(bare)


def modified_prompts(name: str, modifiers) -> list[str]:
    """One prompt per modifier word: the i-th word in the i-th of MODIFIER_TEMPLATES (cycled)."""
    return [_fix_article(MODIFIER_TEMPLATES[i % len(MODIFIER_TEMPLATES)].format(m, name)) for i, m in enumerate(modifiers)]


def split_words(text: str | None) -> list[str]:
    """A comma-separated option value -> its non-empty, stripped items."""
    return [w.strip() for w in (text or "").split(",") if w.strip()]


def warn_unseen_concept(concept: str, known_words: set[str]) -> bool:
    """Warn when none of a concept's words were in the model's training captions (toy model). Returns True if warned."""
    words = {w.strip(",.").lower() for w in concept.split()}
    if known_words and not (words & known_words):
        warnings.warn(f"the model never saw the words of concept {concept!r} in training; erasing it will do little "
                      f"(known words include: {', '.join(sorted(known_words)[:12])}, ...)", stacklevel=2)
        return True
    return False
