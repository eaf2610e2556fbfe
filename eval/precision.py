"""Precision experiments on the toy world (issue #12): erase a few classes with option variants and measure what the
other classes lose, the semu-eval way (toy_classes + toy_colors, toy judge + pixel colour oracle).

    python eval/precision.py --classes crescent,circle,heart --variants "default" "r10:retain_weight=10"

A variant is ``name:key=value;key=value`` with keys of EraseConfig (values parsed as Python literals). Results go to
eval/results/precision-runs.json (resumable: finished (variant, class) pairs are skipped); a table is printed.

    python eval/precision.py --classes crescent --ablate default

Layer ablation: the variant's delta of each class is evaluated with one group of layers removed at a time
(cross-attention, resnet convs, attention projections), to see which layers carry the erasure and the drift.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from semu_diffusion import atomic  # noqa: E402
sys.path.insert(0, str(ROOT / "eval"))


def parse_variant(spec: str) -> tuple[str, dict]:
    name, _, body = spec.partition(":")
    opts = {}
    for kv in filter(None, body.split(";")):
        k, _, v = kv.partition("=")
        try:
            opts[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            opts[k.strip()] = v.strip()
    return name, opts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", default="crescent,circle,heart")
    p.add_argument("--variants", nargs="+", default=["default"])
    p.add_argument("--per-prompt", type=int, default=10)
    p.add_argument("--results", default=str(ROOT / "eval" / "results" / "precision-runs.json"))
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "precision"))
    p.add_argument("--ablate", default=None, help="variant whose deltas to ablate by layer group")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from classwise import kept_color_accuracy

    from semu_diffusion import erase
    from semu_diffusion.cli import _quiet_libraries
    from semu_diffusion.evaluation import EvalConfig, run_eval
    from semu_diffusion.loading import load_pipeline

    _quiet_libraries()
    from _common import load_results, work_folder

    res_path = Path(a.results)
    results = load_results(res_path, {"runs": {}, "base": {}})
    work = work_folder(a.work_dir, results)
    pipe = load_pipeline("toy")
    if a.ablate:
        return ablate(a, pipe, results, res_path, work)
    variants = [parse_variant(v) for v in a.variants]
    for c in a.classes.split(","):
        for name, opts in variants:
            key = f"{name}/{c}"
            if key in results["runs"]:
                continue
            delta = work / "deltas" / f"{name}-{c}.safetensors"
            t0 = time.time()
            r = erase(c, pipe=pipe, out=delta, progress=False, log=lambda *x: None, **opts)
            erase_s = time.time() - t0
            rep = run_eval(EvalConfig(model="toy", deltas=[str(delta)], prompt_sets=["toy_classes"],
                                      per_prompt=a.per_prompt, out=str(work / "eval"), forget_label=c), log=lambda *x: None)
            colors = run_eval(EvalConfig(model="toy", deltas=[str(delta)], prompt_sets=["toy_colors"], judges=["toy-color"],
                                         per_prompt=4, out=str(work / "eval-colors"), fd="none"), log=lambda *x: None)
            cl, v = rep["results"]["toy_classes"], delta.stem
            results["base"][c] = {"RA": cl["base"]["RA"], "color_kept": kept_color_accuracy(colors, "base", c),
                                  "per_label": cl["base"]["per_label_accuracy"]}
            results["runs"][key] = {"variant": name, "options": {k: str(x) for k, x in opts.items()}, "class": c,
                                    "UA": cl[v]["UA"], "RA": cl[v]["RA"], "fd_base": cl[v].get("fd_clip_retained_vs_base"),
                                    "color_kept": kept_color_accuracy(colors, v, c), "per_label": cl[v]["per_label_accuracy"],
                                    "trainable_frac": r.stats["trainable_frac"], "erase_seconds": erase_s}
            atomic.write_json(res_path, results)
            x = results["runs"][key]
            print(f"{key:40s} UA {x['UA']:.2f} RA {x['RA']:.3f} colour {x['color_kept']:.3f} FDb {x['fd_base']:.2f} "
                  f"share {x['trainable_frac']:.4f} {erase_s:.0f}s  low: "
                  + ", ".join(f"{k} {q:.1f}" for k, q in x["per_label"].items() if q < 0.95 and k != c), flush=True)
    print(table(results))


GROUPS = {"cross-attention": r"attn2\.", "resnet convs": r"resnets\.", "attention proj_in/out": r"attentions\.\d+\.proj_"}


def ablate(a, pipe, results, res_path, work) -> None:
    """Each class's delta of variant ``a.ablate`` with one layer group dropped (or kept alone)."""
    import re

    from semu_diffusion.delta import fingerprint, read_delta, save_delta
    from semu_diffusion.evaluation import EvalConfig, run_eval
    from semu_diffusion.methods.base import Delta

    for c in a.classes.split(","):
        src = work / "deltas" / f"{a.ablate}-{c}.safetensors"
        d, prov = read_delta(src)
        for g, rx in GROUPS.items():
            for mode in ("without", "only"):
                key = f"{a.ablate} {mode} {g}/{c}"
                if key in results["runs"]:
                    continue
                keep = [n for n in d.lora if bool(re.search(rx, n)) == (mode == "only")]
                sub = Delta(format="lora", lora={n: d.lora[n] for n in keep}, ranks={n: d.ranks[n] for n in keep})
                out = work / "deltas" / f"ablate-{a.ablate}-{mode}-{g.split()[0]}-{c}.safetensors"
                save_delta(out, sub, dict(prov, base_fingerprint=fingerprint(pipe.unet, sub.modules()), ranks=sub.ranks))
                rep = run_eval(EvalConfig(model="toy", deltas=[str(out)], prompt_sets=["toy_classes"],
                                          per_prompt=a.per_prompt, out=str(work / "eval-ablate"), forget_label=c),
                               log=lambda *x: None)
                cl = rep["results"]["toy_classes"]
                r = cl[out.stem]
                results["runs"][key] = {"variant": f"{a.ablate} {mode} {g}", "class": c, "UA": r["UA"], "RA": r["RA"],
                                        "fd_base": r.get("fd_clip_retained_vs_base"), "color_kept": None,
                                        "per_label": r["per_label_accuracy"], "layers": len(keep)}
                results["base"].setdefault(c, {"RA": cl["base"]["RA"], "per_label": cl["base"]["per_label_accuracy"]})
                atomic.write_json(res_path, results)
                print(f"{key:50s} layers {len(keep):3d} UA {r['UA']:.2f} RA {r['RA']:.3f} "
                      f"FDb {r.get('fd_clip_retained_vs_base', float('nan')):.2f}", flush=True)


def table(results: dict) -> str:
    import numpy as np

    names = list(dict.fromkeys(r["variant"] for r in results["runs"].values()))
    lines = ["| variant | classes | UA | RA drop (worst) | colour acc drop | FD-CLIP vs base | erase s |", "|---|---|---|---|---|---|---|"]
    for n in names:
        rs = [r for r in results["runs"].values() if r["variant"] == n]
        drop = [results["base"][r["class"]]["RA"] - r["RA"] for r in rs]
        cd = [results["base"][r["class"]]["color_kept"] - r["color_kept"] for r in rs if r.get("color_kept") is not None]
        lines.append(f"| {n} | {','.join(r['class'] for r in rs)} | {np.mean([r['UA'] for r in rs]):.3f} | "
                     f"{np.mean(drop):.3f} ({max(drop):.3f}) | {np.mean(cd) if cd else float('nan'):.3f} | "
                     f"{np.mean([r['fd_base'] for r in rs]):.2f} | {np.mean([r.get('erase_seconds', 0) for r in rs]):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
