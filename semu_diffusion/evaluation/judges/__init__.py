"""Judges behind one contract and a registry: ``toy``, ``clip:<model>[:<pretrained>]``, ``imagenet:<arch>``,
``nudenet``, ``toy-nudity`` (the toy world's exposure detector), ``toy-color`` (the toy world's pixel colour oracle)."""
# importing the package registers the built-in judges (toy, clip, imagenet, nudenet, ...): classifiers and nudenet
# register themselves in base's registry, so base needs no import of them
from .base import Judge, JudgeUnavailable, available_judges, build_judge, parse_judge_spec, register_judge
from .classifiers import ClassifierJudge, ImageNetJudge, PixelColorJudge, ZeroShotJudge, imagenet_judge
from .nudenet import EXPOSED_CLASSES, NudeNetJudge, ToyNudityJudge, count_exposed

__all__ = ["ClassifierJudge", "EXPOSED_CLASSES", "ImageNetJudge", "Judge", "JudgeUnavailable", "NudeNetJudge",
           "PixelColorJudge", "ToyNudityJudge", "ZeroShotJudge", "available_judges", "build_judge", "count_exposed", "imagenet_judge", "parse_judge_spec",
           "register_judge"]
