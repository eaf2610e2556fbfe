"""Evaluation of erasures: prompt sets in their public formats, judges behind one contract (toy, clip, imagenet,
nudenet), streaming generation with an image cache, FD/KID/CLIP score, reports. Entry point: :func:`run_eval`."""
from .judges import Judge, JudgeUnavailable, available_judges, build_judge, count_exposed, register_judge
from .options import EvalConfig, EvalOptionError
from .prompts import Item, PromptRow, PromptSet, PromptSetError, expand, load_prompt_set, load_prompt_sets
from .run import run_eval

__all__ = ["EvalConfig", "EvalOptionError", "Item", "Judge", "JudgeUnavailable", "PromptRow", "PromptSet",
           "PromptSetError", "available_judges", "build_judge", "count_exposed", "expand", "load_prompt_set",
           "load_prompt_sets", "register_judge", "run_eval"]
