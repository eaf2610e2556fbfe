"""Measure the toy-world models: toy-CLIP zero-shot accuracy and the pipeline's per-class generation accuracy."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from . import WEIGHTS_DIR, load_toy_pipeline, load_toyclip, world
from .train import to_tensor

HELD_OUT_SEED = 10_007  # training data uses seed 0..; this seed is never used for training
TARGETS = {"clip_shape_acc": 0.95, "clip_color_acc": 0.95, "gen_shape_acc": 0.85, "gen_shape_acc_min": 0.6,
           "gen_color_acc": 0.9}


def weights_mb(weights_dir: Path = WEIGHTS_DIR) -> float:
    return sum(p.stat().st_size for p in Path(weights_dir).rglob("*.safetensors")) / 1e6


def clip_accuracy(n: int = 1000, clip_path=None, seed: int = HELD_OUT_SEED) -> dict:
    from ..metrics import toy_color_classifier, toy_shape_classifier

    model, tok = load_toyclip(clip_path)
    images, shapes, colors, _ = world.make_dataset(n, seed=seed)
    x = to_tensor(images)
    sp = toy_shape_classifier(model, tok).classify(x).labels.numpy()
    cp = toy_color_classifier(model, tok).classify(x).labels.numpy()
    return {"clip_shape_acc": float((sp == shapes).mean()), "clip_color_acc": float((cp == colors).mean())}


def generation_accuracy(per_class: int = 20, pipeline_dir=None, clip_path=None, progress: bool = True) -> dict:
    from ..generation import generate
    from ..metrics import toy_shape_classifier

    pipe = load_toy_pipeline(pipeline_dir)
    model, tok = load_toyclip(clip_path)
    judge = toy_shape_classifier(model, tok)
    prompts = [world.caption("a photo of a {s}", s, None) for s in world.SHAPE_NAMES for _ in range(per_class)]
    seeds = [i for _ in world.SHAPE_NAMES for i in range(per_class)]
    imgs = generate(pipe, prompts, seeds, progress=progress, desc="shapes")
    pred = judge.classify(to_tensor(imgs)).labels.numpy().reshape(len(world.SHAPE_NAMES), per_class)
    per = {s: float((pred[i] == i).mean()) for i, s in enumerate(world.SHAPE_NAMES)}
    cprompts, ctrue, cseeds = [], [], []
    for ci, c in enumerate(world.COLOR_NAMES):
        for k in range(per_class):
            cprompts.append(world.caption("a photo of a {c} {s}", world.SHAPE_NAMES[k % len(world.SHAPE_NAMES)], c))
            ctrue.append(ci)
            cseeds.append(1000 + k)
    cimgs = generate(pipe, cprompts, cseeds, progress=progress, desc="colours")
    color_acc = float((world.color_oracle(cimgs) == np.array(ctrue)).mean())
    return {"gen_shape_acc": float(np.mean(list(per.values()))), "gen_shape_acc_min": float(min(per.values())),
            "gen_per_class": per, "gen_color_acc": color_acc, "_shape_images": imgs, "_color_images": cimgs}


def run_check(n_clip: int = 1000, per_class: int = 20, progress: bool = True) -> dict:
    torch.manual_seed(0)
    t0 = time.time()
    res = clip_accuracy(n_clip)
    g = generation_accuracy(per_class, progress=progress)
    res.update({k: v for k, v in g.items() if not k.startswith("_")})
    res["weights_mb"] = round(weights_mb(), 2)
    res["seconds"] = round(time.time() - t0, 1)
    res["meets_targets"] = bool(all(res[k] >= v for k, v in TARGETS.items()) and res["weights_mb"] <= 30)
    return res
