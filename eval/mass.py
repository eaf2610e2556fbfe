"""Mass erasure on the embedded toy model, the MACE way: erase N = 1, 5, 10, 20 of the 31 object classes (fixed nested
subsets: the first N of ORDER, a seeded shuffle of the classes other than the default anchors circle and square).

Variants:
  semu-joint     one SEMU delta for all N classes (erase_concepts, CLI defaults: subspaces concatenated per layer,
                 the kept classes as anchors in turn)
  semu-stacked   N single-class SEMU deltas (CLI defaults), folded with merge_deltas (== stacking the adapters)
  esd-x-stacked  N single-class ESD-x deltas (--rival-steps training steps), folded the same way
  uce            UCE, the closed-form cross-attention edit, with every class's prompts in one solve per layer
Measured on prompts/toy_objects.csv ("a photo of a <class>", all 31, same seeds in every row; toy judge over the 31
classes): UA = mean over erased classes of 1 - accuracy; RA = mean accuracy over the kept classes; H = harmonic mean
of UA and RA; delta MB (the file); seconds = erase wall time (stacked: the sum of its single erases).
Stacked variants cost one erase per class, so by default they run at --stacked-sizes only (CPU budget; said in the
table). Writes eval/results/mass.{json,md} and mass-grid.png. Resumable: finished rows and single deltas are kept.

    python eval/mass.py
    python eval/mass.py --sizes 1,5 --variants semu-joint,uce
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from semu_diffusion import atomic  # noqa: E402
from semu_diffusion.toy import world  # noqa: E402

from _common import add_run_args, cached_images, evaluate, image_grid, open_results, stacked_delta  # noqa: E402

# numpy.random.default_rng(0).permutation of the 29 classes other than circle and square (the default anchors)
ORDER = ["mushroom", "hexagon", "trapezoid", "bell", "semicircle", "cross", "leaf", "frame", "ring", "flag", "sun",
         "heart", "drop", "pentagon", "triangle", "bolt", "arrow", "hourglass", "house", "crescent"]
VARIANTS = ["uce", "semu-joint", "semu-stacked", "esd-x-stacked"]  # run order: cheapest first
STACKED = {"semu-stacked": "semu", "esd-x-stacked": "esd-x"}
SET = "toy_objects"


def harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,5,10,20")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--stacked-sizes", default="1,5", help="sizes at which the stacked variants run (one erase per class)")
    p.add_argument("--rival-steps", type=int, default=100, help="ESD-x training steps (SEMU keeps the CLI default)")
    p.add_argument("--per-prompt", type=int, default=4, help="images per class prompt")
    add_run_args(p, "mass")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from semu_diffusion import erase, erase_concepts
    from semu_diffusion.cli import _quiet_libraries
    from semu_diffusion.loading import load_pipeline

    _quiet_libraries()
    sizes = [int(x) for x in a.sizes.split(",") if x]
    stacked_sizes = {int(x) for x in a.stacked_sizes.split(",") if x}
    variants = [v for v in a.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS] + [n for n in sizes if not 1 <= n <= len(ORDER)]
    if bad:
        p.error(f"unknown variant or size {bad[0]!r}: variants {', '.join(VARIANTS)}; sizes 1..{len(ORDER)}")
    out, work, res_path, results = open_results(a.out_dir, a.work_dir, "mass.json")
    extra = json.loads(a.erase_options)
    results.setdefault("singles", {})
    results.update({"per_prompt": a.per_prompt, "seed": a.seed, "order": ORDER, "stacked_sizes": sorted(stacked_sizes),
                    "erase_options": {"semu": dict(extra), "esd-x": {"method": "esd-x", "steps": a.rival_steps, **extra},
                                      "uce": {"method": "uce", **extra}},
                    "protocol": "toy world v2; erased = the first N of ORDER; eval prompts = prompts/toy_objects.csv "
                                "(\"a photo of a <class>\", which is also the first of the object forget templates and "
                                "of the retain templates, as in the class-wise protocol); toy judge over 31 classes"})
    pipe = None

    def save():
        atomic.write_json(res_path, results)
        atomic.write_text(out / "mass.md", table(results))

    def erase_one(method):
        return lambda c, path: erase(c, pipe=pipe, out=path, seed=a.seed, progress=False, log=lambda *x: None,
                                     **results["erase_options"][method])

    todo = [(n, v) for v in variants for n in sizes if v not in STACKED or n in stacked_sizes]
    for n, v in todo:
        key = f"{n}/{v}"
        if "UA" in results["rows"].get(key, {}):
            continue
        erased = ORDER[:n]
        path = work / "deltas" / f"n{n}-{v}.safetensors"
        pipe = pipe or load_pipeline("toy")
        print(f"[{time.strftime('%H:%M:%S')}] N={n} {v} ...", flush=True)
        if "seconds" in results["rows"].get(key, {}) and path.exists():
            row = results["rows"][key]  # erased by a run cut during its evaluation
        else:
            if v in STACKED:
                m = STACKED[v]
                row = stacked_delta(results["singles"].setdefault(m, {}), erased,
                                    lambda c: work / "deltas" / f"single-{m}-{c}.safetensors", erase_one(m), path, save)
            else:
                t0 = time.time()
                opts = results["erase_options"]["uce" if v == "uce" else "semu"]
                r = erase_concepts(erased, pipe=pipe, out=path, seed=a.seed, progress=False, log=lambda *x: None, **opts)
                row = {"seconds": time.time() - t0, "trainable_frac": r.stats.get("trainable_frac"),
                       "rank_mean": r.stats.get("rank_mean")}
            row.update({"n": n, "variant": v, "erased": erased, "delta_bytes": path.stat().st_size,
                        "load_average_1min": os.getloadavg()[0]})
            results["rows"][key] = row
            save()
        res = evaluate(work, path, [SET], a.per_prompt, a.seed, judges=["toy"], fd="none")[SET]
        acc, base = res[path.stem]["per_label_accuracy"], res["base"]["per_label_accuracy"]
        kept = [c for c in world.SHAPE_NAMES if c not in erased]
        row.update({"UA": sum(1 - acc[c] for c in erased) / n, "RA": sum(acc[c] for c in kept) / len(kept),
                    "UA_base": sum(1 - base[c] for c in erased) / n, "RA_base": sum(base[c] for c in kept) / len(kept),
                    "UA_per_class": {c: 1 - acc[c] for c in erased}})
        row["H"] = harmonic(row["UA"], row["RA"])
        results["rows"][key] = row
        save()
        print(f"    UA {row['UA']:.3f} RA {row['RA']:.3f} H {row['H']:.3f} {row['delta_bytes'] / 1e6:.2f} MB "
              f"{row['seconds']:.0f} s", flush=True)
    save()
    grid(work / "eval", results, out / "mass-grid.png", a.per_prompt)
    print(table(results))


def grid(eval_dir: Path, results: dict, path: Path, per_prompt: int) -> None:
    """Columns: one image of each of the first 10 erased classes, then of 4 kept classes (circle, square, star,
    diamond). Rows: base, then each variant at its largest measured N."""
    cols = ORDER[:10] + ["circle", "square", "star", "diamond"]
    idx = [world.SHAPE_NAMES.index(c) * per_prompt for c in cols]  # toy_objects.csv lists the classes in this order
    rows, labels = [[cached_images(eval_dir, "base", SET)[i] for i in idx]], ["base"]
    for v in VARIANTS:
        ns = [r["n"] for r in results["rows"].values() if r["variant"] == v and "UA" in r]
        if ns and (eval_dir / "images" / f"n{max(ns)}-{v}").exists():
            rows.append([cached_images(eval_dir, f"n{max(ns)}-{v}", SET)[i] for i in idx])
            labels.append(f"{v} N={max(ns)}")
    image_grid(rows, labels, path, left=120)


def table(results: dict) -> str:
    rows = sorted((r for r in results["rows"].values() if "UA" in r),
                  key=lambda r: (r["n"], VARIANTS.index(r["variant"]) if r["variant"] in VARIANTS else 99))
    steps = results["erase_options"]["esd-x"].get("steps")
    lines = [f"Mass erasure on the toy model (toy world v2, MACE-style; prompts/toy_objects.csv, {results['per_prompt']} "
             "images per class, the same seeds in every row). Erased: the first N of "
             f"{', '.join(results['order'])} (nested); the other classes, circle and square (the default anchors) always "
             "among them, are kept. UA = mean over erased classes of 1 - accuracy (base in brackets); RA = mean accuracy over kept "
             "classes (base in brackets); H = harmonic mean of UA and RA; seconds = erase wall time on "
             f"{results['machine']['cpus']} shared CPUs (stacked: the sum of its single erases; load = 1-minute load "
             "average after the row).", "",
             f"Variants: semu-joint = one SEMU delta for all N (CLI defaults); semu-stacked / esd-x-stacked = N "
             f"single-class deltas folded with merge_deltas (SEMU: CLI defaults; ESD-x: {steps} training steps); "
             "uce = one closed-form solve over all N. Stacked variants are measured at N = "
             f"{', '.join(map(str, results.get('stacked_sizes', [])))} only: each costs one full erase per class "
             "(about 1-1.5 min each on this machine), which the 35-minute CPU budget of the default run cannot "
             "hold at the larger N.", "",
             "| N | variant | UA (base) | RA (base) | H | delta MB | seconds | load |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['variant']} | {r['UA']:.3f} ({r['UA_base']:.3f}) | {r['RA']:.3f} ({r['RA_base']:.3f}) | "
                     f"{r['H']:.3f} | {r['delta_bytes'] / 1e6:.2f} | {r['seconds']:.0f} | {r.get('load_average_1min', 0):.1f} |")
    lines += ["", "UA per erased class at the largest N of each variant:", ""]
    for v in VARIANTS:
        rv = [r for r in rows if r["variant"] == v]
        if rv:
            r = rv[-1]
            lines.append(f"- N={r['n']} {v}: " + ", ".join(f"{c} {u:.2f}" for c, u in r["UA_per_class"].items()))
    goal = results["rows"].get("20/semu-joint", {})
    if "UA" in goal:
        ok = goal["H"] >= 0.90 and goal["delta_bytes"] / 1e6 <= 5
        lines += ["", f"Goal (issue 23): SEMU joint at N = 20 reaches H = {goal['H']:.3f} (goal ≥ 0.90) with a "
                  f"{goal['delta_bytes'] / 1e6:.2f} MB delta (goal ≤ 5 MB): {'met' if ok else 'missed'}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
