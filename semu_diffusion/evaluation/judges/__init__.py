"""Judges behind one contract and a registry: ``toy``, ``clip:<model>[:<pretrained>]``, ``imagenet:<arch>``,
``nudenet``."""
from .base import Judge, JudgeUnavailable, available_judges, build_judge, parse_judge_spec, register_judge
from .classifiers import ClassifierJudge, ImageNetJudge, ZeroShotJudge, imagenet_judge
from .nudenet import EXPOSED_CLASSES, NudeNetJudge, count_exposed

__all__ = ["ClassifierJudge", "EXPOSED_CLASSES", "ImageNetJudge", "Judge", "JudgeUnavailable", "NudeNetJudge",
           "ZeroShotJudge", "available_judges", "build_judge", "count_exposed", "imagenet_judge", "parse_judge_spec",
           "register_judge"]
