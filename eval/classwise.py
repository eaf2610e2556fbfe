"""Class-wise forgetting benchmark on the toy world: every method erases every class, evaluated with the
semu-eval protocol on all 31 classes of toy world v2 (toy_objects) and on three phrasing families of the erased
class (UA per family: colour-qualified, paraphrase, synonym; prompts/toy_colorq.csv, toy_paraphrases.csv,
toy_synonyms_all.csv).

    python eval/classwise.py --name classwise-v2           # all 31 classes x all methods (long on CPU)
    python eval/classwise.py --name classwise-v2 --methods semu --classes star,heart,ring,tree,mug,fish --per-prompt 4
    python eval/classwise.py --classes triangle,star,heart --methods semu,esd-x --per-prompt 10
    python eval/classwise.py --classes triangle,star --methods semu,semu-paper --per-prompt 4 --name classwise-paper-partial

A method name that is a paper-exact preset (semu-paper, esd-x-paper, esd-u-paper) runs ``erase(preset=...)``.

Writes eval/results/classwise.json (every number, resumable: finished (method, class) pairs are skipped) and
eval/results/classwise.md (one row per method: means over classes, worst class in brackets).

    python eval/classwise.py --merge classwise-semu.json --carry classwise-before.json:full,salun --methods ...

``--merge FILE`` adds the runs of another result file (runs of this file win); ``--carry FILE:m1,m2`` adds the rows
of those methods from an older run, marked with a dagger in the table (measured by an earlier version of the code).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from semu_diffusion import atomic  # noqa: E402
sys.path.insert(0, str(ROOT / "eval"))
from _common import load_results, work_folder  # noqa: E402

CLASSES_SET = "toy_objects"  # "a photo of a X" for the 31 classes of toy world v2 (UA, RA)
# UA per phrasing family (our own phrasings; prompts/README.md): colour-qualified, paraphrase, synonym
FAMILIES = {"colour": "toy_colorq", "paraphrase": "toy_paraphrases", "synonym": "toy_synonyms_all"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", default=None, help="comma-separated toy classes (default: all)")
    p.add_argument("--methods", default=None, help="comma-separated methods or paper presets (default: all registered "
                   "methods and every paper-exact preset)")
    p.add_argument("--name", default="classwise", help="result file stem in --out-dir (default: classwise)")
    p.add_argument("--per-prompt", type=int, default=20)
    p.add_argument("--color-per-prompt", type=int, default=4, help="images per toy_colors prompt (colour accuracy of "
                   "the kept shapes, pixel oracle)")
    p.add_argument("--out-dir", default=str(ROOT / "eval" / "results"))
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "classwise"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--merge", action="append", default=[], help="result file (in --out-dir) whose runs to add")
    p.add_argument("--carry", action="append", default=[], help="FILE:method,method rows carried from an older run")
    p.add_argument("--erase-options", default="{}", help="JSON of extra erase options for every run, e.g. "
                   "'{\"forget_modifiers\": \"\"}' (use another --name: rows are keyed by method and class)")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tqdm.auto import tqdm

    from semu_diffusion import erase
    from semu_diffusion.cli import _quiet_libraries
    from semu_diffusion.evaluation import EvalConfig, run_eval
    from semu_diffusion.loading import load_pipeline
    from semu_diffusion.methods import available_methods
    from semu_diffusion.config import PAPER_PRESETS
    from semu_diffusion.toy import world

    _quiet_libraries()
    classes = a.classes.split(",") if a.classes else list(world.SHAPE_NAMES)
    methods = a.methods.split(",") if a.methods else available_methods() + list(PAPER_PRESETS)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / f"{a.name}.json"
    results = load_results(res_path, {"runs": {}})
    work = work_folder(a.work_dir, results)
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count()}
    results["per_prompt"] = a.per_prompt
    results["color_per_prompt"] = a.color_per_prompt
    extra = json.loads(a.erase_options)
    if extra:
        results["erase_options"] = extra
    merge_results(results, out, a.merge, a.carry)
    if a.merge or a.carry:
        atomic.write_json(res_path, results)
    pipe = load_pipeline("toy")
    # class-major order: an interrupted run leaves every method measured on the same classes
    pairs = [(m, c) for c in classes for m in methods if f"{m}/{c}" not in results["runs"]]
    bar = tqdm(pairs, desc="classwise", dynamic_ncols=True)
    base_cache = {}
    for m, c in bar:
        bar.set_postfix(method=m, cls=c)
        delta = work / "deltas" / f"{m}-{c}.safetensors"
        t0 = time.time()
        how = {"preset": m} if m in PAPER_PRESETS else {"method": m}
        r = erase(c, pipe=pipe, out=delta, seed=a.seed, progress=False, log=lambda *x: None, **how, **extra)
        erase_s = time.time() - t0
        rep = run_eval(EvalConfig(model="toy", deltas=[str(delta)], prompt_sets=[CLASSES_SET] + list(FAMILIES.values()),
                                  per_prompt=a.per_prompt, out=str(work / "eval"), forget_label=c, seed=a.seed),
                       log=lambda *x: None)
        colors = run_eval(EvalConfig(model="toy", deltas=[str(delta)], prompt_sets=["toy_colors"], judges=["toy-color"],
                                     per_prompt=a.color_per_prompt, out=str(work / "eval-colors"), fd="none", seed=a.seed),
                          log=lambda *x: None)
        v = delta.stem
        cl, syn = rep["results"][CLASSES_SET], rep["results"][FAMILIES["synonym"]]
        fam = lambda v: {f"UA_{k}": rep["results"][ps][v]["UA"] for k, ps in FAMILIES.items()}  # noqa: E731
        base_cache[c] = {"UA": cl["base"]["UA"], "RA": cl["base"]["RA"], "UA_syn": syn["base"]["UA"], **fam("base"),
                         "color_kept": kept_color_accuracy(colors, "base", c),
                         "fd_real": cl["base"].get("fd_clip_retained_vs_real"), "clip_score": cl["base"].get("clip_score_retained")}
        results.setdefault("base", {})[c] = base_cache[c]
        results["runs"][f"{m}/{c}"] = {
            "method": m, "class": c, "UA": cl[v]["UA"], "RA": cl[v]["RA"], "UA_syn": syn[v]["UA"], **fam(v),
            "fd_real": cl[v].get("fd_clip_retained_vs_real"), "fd_base": cl[v].get("fd_clip_retained_vs_base"),
            "clip_score": cl[v].get("clip_score_retained"), "color_kept": kept_color_accuracy(colors, v, c),
            "trainable_frac": r.stats["trainable_frac"],
            "delta_bytes": r.stats["delta_bytes"], "erase_seconds": erase_s, "per_label_accuracy": cl[v]["per_label_accuracy"],
        }
        atomic.write_json(res_path, results)
        write_table(out, results, methods, classes, a.name)
    print(write_table(out, results, methods, classes, a.name))


def merge_results(results: dict, out: Path, merge: list[str], carry: list[str]) -> None:
    """Add the runs (and base figures) of other result files; carried rows are marked with their source. A file
    measured on other toy weights is refused."""
    def read(name: str) -> dict:
        other = json.loads((out / name).read_text())
        if other.get("toy_weights") != results["toy_weights"]:
            raise SystemExit(f"classwise.py: {name} was measured on other toy weights "
                             f"({other.get('toy_weights', 'unrecorded')}, now {results['toy_weights']}): re-run it first")
        return other

    for name in merge:
        other = read(name)
        for k, v in other["runs"].items():
            results["runs"].setdefault(k, v)
        for c, b in other.get("base", {}).items():
            results.setdefault("base", {}).setdefault(c, b)
    for spec in carry:
        name, _, ms = spec.partition(":")
        other = read(name)
        for k, v in other["runs"].items():
            if v["method"] in ms.split(",") and k not in results["runs"]:
                results["runs"][k] = dict(v, carried_from=name)
        results.setdefault("carried", {})[name] = ms.split(",")


def kept_color_accuracy(rep: dict, variant: str, erased: str) -> float:
    """Pixel-oracle colour accuracy on the toy_colors prompts whose shape is not the erased class."""
    acc = rep["results"]["toy_colors"][variant]["judges"]["toy-color"]["per_prompt_accuracy"]
    kept = [a for pr, a in acc.items() if pr.split()[-1] != erased]
    return float(sum(kept) / len(kept))


def write_table(out: Path, results: dict, methods: list[str], classes: list[str], name: str = "classwise") -> str:
    md = table(results, methods, classes)
    atomic.write_text(out / f"{name}.md", md)
    return md


def table(results: dict, methods: list[str], classes: list[str]) -> str:
    import numpy as np

    def agg(vals, worst):
        v = [x for x in vals if x is not None]
        if not v:
            return "-"
        w = min(v) if worst == "min" else max(v)
        return f"{np.mean(v):.3f} [{w:.3f}]"

    def fams(rs):  # v1 runs measured synonyms only (toy_synonyms): shown in the synonym column
        return " | ".join(agg([r.get(f"UA_{k}", r.get("UA_syn") if k == "synonym" else None) for r in rs], "min")
                          for k in FAMILIES)

    base = results.get("base", {})
    lines = [f"# Class-wise forgetting on the toy world ({results['per_prompt']} images per prompt, classes: "
             f"{', '.join(classes)})", "",
             f"Machine: {results['machine']['platform']}, {results['machine']['cpus']} CPUs. Means over classes, worst "
             "class in brackets. UA = 1 - accuracy on the erased class, RA = accuracy on the other classes.", "",
             "| method | classes | UA | UA colour | UA paraphrase | UA synonym | RA | RA drop vs base | FD-CLIP vs real | FD-CLIP vs base | CLIP score | colour acc. kept | trainable share | delta MB | erase s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if base:
        bs = [base[c] for c in classes if c in base]
        lines.append(f"| base | {len(bs)} | {agg([b['UA'] for b in bs], 'min')} | {fams(bs)} | "
                     f"{agg([b['RA'] for b in bs], 'min')} | - | {agg([b['fd_real'] for b in bs], 'max')} | - | "
                     f"{agg([b['clip_score'] for b in bs], 'min')} | {agg([b.get('color_kept') for b in bs], 'min')} | "
                     "- | - | - |")
    for m in methods:
        rs = [results["runs"].get(f"{m}/{c}") for c in classes]
        rs = [r for r in rs if r]
        if not rs:
            continue
        drop = [base[r["class"]]["RA"] - r["RA"] for r in rs if r["class"] in base]
        lines.append(f"| {m}{' †' if any(r.get('carried_from') for r in rs) else ''} | {len(rs)} | {agg([r['UA'] for r in rs], 'min')} | {fams(rs)} | "
                     f"{agg([r['RA'] for r in rs], 'min')} | {agg(drop, 'max')} | {agg([r['fd_real'] for r in rs], 'max')} | "
                     f"{agg([r['fd_base'] for r in rs], 'max')} | {agg([r['clip_score'] for r in rs], 'min')} | "
                     f"{agg([r.get('color_kept') for r in rs], 'min')} | "
                     f"{agg([r['trainable_frac'] for r in rs], 'max')} | {np.mean([r['delta_bytes'] for r in rs]) / 1e6:.2f} | "
                     f"{np.mean([r['erase_seconds'] for r in rs]):.1f} |")
    for name, ms in results.get("carried", {}).items():
        lines.append(f"\n† {', '.join(ms)}: rows carried from `{name}` (an earlier version of the code, before the "
                     "colour column existed); not re-run.")
    done = [c for c in classes if any(f"{m}/{c}" in results["runs"] for m in methods)]
    lines += ["", "UA per erased class (RA in brackets):", "",
              "| method | " + " | ".join(done) + " |", "|---|" + "---|" * len(done)]
    for m in methods:
        cells = [results["runs"].get(f"{m}/{c}") for c in done]
        if any(cells):
            lines.append(f"| {m} | " + " | ".join(f"{r['UA']:.2f} ({r['RA']:.2f})" if r else "-" for r in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
