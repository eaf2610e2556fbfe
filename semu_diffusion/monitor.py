"""Stop training when the concept is gone: every k steps, generate a few fixed-seed images of the forget prompts with
the model being trained and let a judge (the same judges as ``semu-eval``) measure how many still show the concept.

Training past that point only moves the model further from its base: the retained classes drift (issue #12).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

from .generation import generate


@dataclass
class ErasureMonitor:
    """``__call__(step)`` -> True once the detected share of the concept is <= ``threshold``."""

    pipe: object
    judge: object
    prompts: list[str]
    seeds: list[int]
    threshold: float = 0.0
    gen_steps: int = 25
    guidance_scale: float = 7.5
    height: int | None = None
    autocast: Callable = nullcontext
    prompt_set: object = None
    concept_label: str = ""
    history: list = field(default_factory=list)  # (step, detected share)

    def detected(self) -> float:
        from .evaluation.prompts import Item

        with self.autocast():
            images = generate(self.pipe, self.prompts, self.seeds, steps=self.gen_steps,
                              guidance_scale=self.guidance_scale, progress=False, height=self.height)
        h, w = images.shape[1:3]
        items = [Item(index=i, row=i, prompt=p, seed=s, guidance=self.guidance_scale, height=h, width=w,
                      label=self.concept_label) for i, (p, s) in enumerate(zip(self.prompts, self.seeds))]
        recs = self.judge.judge(images, items, self.prompt_set)
        out = self.judge.summarize(recs, items, self.prompt_set, self.concept_label)
        if "detection_rate" in out:
            return float(out["detection_rate"])
        if "share_with_exposed" in out:  # NudeNet
            return float(out["share_with_exposed"])
        raise ValueError(f"judge {self.judge.name} gives no detection figure for the concept: use a classifier judge")

    def __call__(self, step: int) -> bool:
        d = self.detected()
        self.history.append((step, d))
        return d <= self.threshold


def build_monitor(pipe, concept: str, prompts: list[str], judge, n: int, seed: int, device: str,
                  alternatives: list[str], **kw) -> ErasureMonitor:
    """A monitor over ``n`` fixed-seed images of ``prompts`` (cycled). ``judge``: a built judge or its spec.
    ``alternatives``: the other class names a zero-shot judge chooses between (the concept is always one of them)."""
    from .evaluation.judges import ClassifierJudge, build_judge
    from .evaluation.prompts import PromptRow, PromptSet

    if isinstance(judge, str):
        judge = build_judge(judge, device)
    ps = PromptSet(name="erasure-monitor", rows=[PromptRow(prompt=p, label=concept) for p in prompts])
    judge.setup([ps], forget_label=concept)
    if isinstance(judge, ClassifierJudge) and not judge.spaces.get(ps.name):
        others = [a for a in alternatives if a and a.lower() != concept.lower()]
        if not others:
            raise ValueError("the stop judge needs other class names to choose from: set an --anchor")
        judge.spaces[ps.name] = [concept] + list(dict.fromkeys(others))
    sel = [prompts[i % len(prompts)] for i in range(n)]
    seeds = [seed * 100003 + 50_000 + i for i in range(n)]
    return ErasureMonitor(pipe=pipe, judge=judge, prompts=sel, seeds=seeds, prompt_set=ps,
                          concept_label=concept, **kw)
