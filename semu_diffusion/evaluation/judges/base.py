"""The judge contract and registry.

A judge looks at generated images batch by batch and returns one small JSON-able record per image
(:meth:`Judge.judge`); :meth:`Judge.summarize` turns the records of one (variant, prompt set) into numbers, and
:meth:`Judge.compare` adds figures relative to the base model. Records are kept per image, so a sharded run merges
them by image index and gets exactly the report of a one-process run.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import EvalOptionError, JudgeUnavailable  # noqa: F401  (JudgeUnavailable: importable from here)

_REGISTRY: dict[str, tuple[Callable, str]] = {}


class Judge:
    name: str = "judge"
    kind: str = "classifier"  # classifier | detector

    def setup(self, sets, forget_label: str | None) -> None:
        """Called once before any image, with every prompt set of the run; raise ValueError for sets it cannot judge."""

    def judge(self, images: np.ndarray, items, ps) -> list:
        """uint8 images (n,H,W,3) of ``items`` of prompt set ``ps`` -> one JSON-able record per image."""
        raise NotImplementedError

    def summarize(self, records: list, items, ps, forget_label: str | None) -> dict:
        raise NotImplementedError

    def compare(self, base: dict, other: dict) -> dict:
        """Extra figures of a delta's summary relative to the base model's."""
        return {}

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind}


def register_judge(prefix: str, usage: str):
    def deco(factory):
        _REGISTRY[prefix] = (factory, usage)
        return factory

    return deco


def available_judges() -> dict[str, str]:
    return {k: u for k, (_, u) in _REGISTRY.items()}


def parse_judge_spec(spec: str) -> tuple[str, list[str]]:
    """``"clip:ViT-B-32:openai"`` -> ("clip", ["ViT-B-32", "openai"]); ``hf-hub:org/name`` stays one argument.
    Checks the syntax only (no import of the judge's dependencies)."""
    s = (spec or "").strip()
    prefix, _, rest = s.partition(":")
    if prefix not in _REGISTRY:
        raise EvalOptionError(f"unknown judge {spec!r}: use one of {', '.join(u for _, u in _REGISTRY.values())}")
    args: list[str] = []
    if rest:
        if rest.startswith("hf-hub:"):
            body = rest[len("hf-hub:"):]
            name, _, pre = body.partition(":")
            args = ["hf-hub:" + name] + ([pre] if pre else [])
        else:
            args = rest.split(":")
        if any(not a.strip() for a in args):
            raise EvalOptionError(f"judge {spec!r} has an empty part: use {_REGISTRY[prefix][1]}")
    factory, usage = _REGISTRY[prefix]
    nmin, nmax = getattr(factory, "n_args", (0, 0))
    if not nmin <= len(args) <= nmax:
        raise EvalOptionError(f"judge {spec!r}: use {usage}")
    return prefix, args


def build_judge(spec: str, device: str = "cpu", **options) -> Judge:
    """A ready judge from its spec; missing dependencies or weights raise :class:`JudgeUnavailable`."""
    prefix, args = parse_judge_spec(spec)
    j = _REGISTRY[prefix][0](*args, device=device, **options)
    j.name = spec.strip()
    return j
