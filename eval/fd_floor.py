"""Noise floor of FD-CLIP on the toy world: the base model against itself with disjoint image seeds.

The class-wise benchmark's "FD-CLIP of the kept classes vs base" compares a model's images with the base model's
images of the *same seeds*; this script gives the yardstick for it: the FD between two sets of base images that
share no seed (what a re-seeded, unchanged model scores), with the same kept-class masks (all classes but one).

    python eval/fd_floor.py [--prompts toy_objects] [--per-prompt 3] [--seeds 0,100,500]

The default matches the class-wise v2 protocol (toy_objects: one prompt per class, 31 classes, 3 images each).

Writes eval/results/fd-floor.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from semu_diffusion import atomic  # noqa: E402
sys.path.insert(0, str(ROOT / "eval"))
from _common import toy_weights_id  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", default="toy_objects", help="prompt set with one prompt per class, in class order")
    p.add_argument("--per-prompt", type=int, default=3)
    p.add_argument("--seeds", default="0,100,500", help="eval seed offsets; image k of class i uses 1000 i + seed + k, "
                   "so offsets must differ by at least --per-prompt for the sets to share no image")
    p.add_argument("--out", default=str(ROOT / "eval" / "results" / "fd-floor.json"))
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    from PIL import Image

    from semu_diffusion.cli import _quiet_libraries
    from semu_diffusion.evaluation import EvalConfig, run_eval
    from semu_diffusion.evaluation.features import ClipFeatures, stats
    from semu_diffusion.metrics import frechet_distance

    _quiet_libraries()
    seeds = [int(s) for s in a.seeds.split(",")]
    if any(abs(x - y) < a.per_prompt for x, y in itertools.combinations(seeds, 2)):
        raise SystemExit(f"fd_floor: seed offsets {seeds} overlap at {a.per_prompt} images per prompt: space them "
                         f">= {a.per_prompt} apart")
    fx = ClipFeatures("toy")
    feats, labels = {}, None
    with tempfile.TemporaryDirectory() as td:
        for s in seeds:
            out = Path(td) / f"s{s}"
            run_eval(EvalConfig(model="toy", deltas=[], prompt_sets=[a.prompts], per_prompt=a.per_prompt,
                                seed=s, out=str(out), fd="none"), log=lambda *x: None)
            files = sorted((out / "images" / "base" / a.prompts).glob("*.png"), key=lambda f: int(f.stem.split("_")[0]))
            feats[s] = fx.features(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
            labels = np.arange(len(files)) // a.per_prompt  # one prompt per class, images in prompt order
    n_cls = int(labels.max()) + 1
    pairs = {}
    for x, y in itertools.combinations(seeds, 2):
        fds = [frechet_distance(*stats(feats[x][labels != c]), *stats(feats[y][labels != c])) for c in range(n_cls)]
        pairs[f"{x}-{y}"] = {"mean": float(np.mean(fds)), "min": float(np.min(fds)), "max": float(np.max(fds))}
    res = {"what": "FD-CLIP (toy CLIP) between base-model image sets with disjoint seeds, kept-class masks (all "
                   "classes but one, averaged over the classes), as in classwise.py's FD vs base",
           "prompts": a.prompts, "toy_weights": toy_weights_id(), "per_prompt": a.per_prompt, "seeds": seeds,
           "n_images_per_set": int(len(labels)), "pairs": pairs,
           "mean": float(np.mean([v["mean"] for v in pairs.values()]))}
    atomic.write_json(Path(a.out), res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
