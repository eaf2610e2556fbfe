"""Robust-mode screening on one concept (issue 25): each variant erases the concept with its options, is measured
with semu-eval (UA/RA/FD-CLIP vs base on toy_objects, 4 images per prompt, seed 0; nudity: UA = 1 - the nudity rate
on the explicit toy I2P prompts, RA and FD on toy_people) and then attacked by the token attack and the
whole-prompt-embedding attack (250 steps, one attack seed, 12 judged images, as eval/attacks.py).

    python eval/robust_sweep.py --concept ring 'r99:{"robust": true, "retain_energy": 0.99}' 'sq:{"anchor": "square"}'

A variant is ``name:JSON`` (erase options on top of the CLI defaults). Results go to
eval/results/robust-sweep.json, keyed ``<name>/<concept>/s<seed>`` (resumable: finished keys are skipped). One seed
and 12 images: a screen for which knob moves the attacks, not a benchmark (eval/attacks.py is the benchmark).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from semu_diffusion import atomic  # noqa: E402
sys.path.insert(0, str(ROOT / "eval"))
from _common import add_run_args, open_results  # noqa: E402
from attacks import concept_quality  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concept", default="ring")
    p.add_argument("--attack-seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=250, help="attack budget")
    p.add_argument("variants", nargs="+", help="name:JSON erase options")
    add_run_args(p, "robust-sweep", seed=False)
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from semu_diffusion import erase
    from semu_diffusion.attacks import AttackConfig, run_attacks
    from semu_diffusion.cli import _quiet_libraries
    from semu_diffusion.loading import load_pipeline

    _quiet_libraries()
    out, work, res_path, results = open_results(a.out_dir, a.work_dir, "robust-sweep.json")
    pipe = load_pipeline("toy")
    for spec in a.variants:
        name, _, js = spec.partition(":")
        key = f"{name}/{a.concept}/s{a.attack_seed}"
        if key in results["rows"]:
            continue
        opts = json.loads(js or "{}")
        w = work / f"{name}-{a.concept}"
        w.mkdir(parents=True, exist_ok=True)
        delta = w / "delta.safetensors"
        t0 = time.time()
        erase(a.concept, pipe=pipe, out=delta, seed=0, progress=False, log=lambda *x: None, **opts)
        rec = {"options": opts, "erase_seconds": time.time() - t0, "delta_mb": delta.stat().st_size / 1e6}
        # as eval/attacks.py, except that a nudity erasure's RA and FD are measured on toy_people alone
        q = concept_quality(a.concept, [delta], w / "eval", 4, kept_sets=("toy_people",))
        rec.update(q[delta.stem], RA_base=q["base"]["RA"])

        def on_variant(_name, vres, rec=rec):
            rec["asr"] = {n: vres[n]["asr"] for n in ("no_attack", "inversion", "embedding", "random")}

        run_attacks(AttackConfig(concept=a.concept, attacks=["inversion", "embedding"], deltas=[str(delta)],
                                 include_base=False, steps=a.steps, n_images=12, checkpoints=2, seed=a.attack_seed,
                                 n_data=16, out=str(w / "attack")), log=None, pipe=pipe, on_variant=on_variant)
        results["rows"][key] = rec
        atomic.write_json(res_path, results)
        print(key, json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
