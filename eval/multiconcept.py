"""Multi-concept erasure on the toy world: N of the 10 classes erased at once.

For each N (fixed nested class subsets, listed in the output) and each variant:
  joint        one joint SEMU delta (semu_diffusion.erase_concepts, subspaces combined with --combine)
  joint-<c>    the same with another subspace combination (--compare-combines, at --compare-at sizes)
  stacked      N single-concept SEMU deltas (one erase each), folded with merge_deltas (== stacked adapters)
  <rival>      the rival method (--rival, default esd-x) trained jointly on the same forget set
Measured: mean UA over the erased classes, RA over the kept ones (toy judge), FD-CLIP of kept-class images vs the
base model's, trainable share, delta MB, erase seconds (model already loaded; stacked: sum of its single erases).

    python eval/multiconcept.py --per-prompt 5           # all sizes (long on CPU)
    python eval/multiconcept.py --sizes 1,5 --variants joint,stacked

Writes eval/results/multiconcept.json (resumable: finished (N, variant) rows are skipped) and multiconcept.md after
every row, so an interrupted run leaves its finished rows.
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
from _common import open_results, stacked_delta  # noqa: E402

# erase order: nested subsets (the first N); circle and square (the default anchors) stay kept to the end
ORDER = ["triangle", "star", "heart", "cross", "hexagon", "diamond", "ring", "crescent"]
ALL = ["circle", "square", "triangle", "star", "cross", "heart", "hexagon", "diamond", "ring", "crescent"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,5,3,2,8", help="numbers of erased classes, in run order")
    p.add_argument("--variants", default="joint,stacked,rival")
    p.add_argument("--combine", default="concat")
    p.add_argument("--compare-combines", default="sum", help="other combinations measured at --compare-at")
    p.add_argument("--compare-at", default="3,5")
    p.add_argument("--rival", default="esd-x")
    p.add_argument("--per-prompt", type=int, default=5)
    p.add_argument("--out-dir", default=str(ROOT / "eval" / "results"))
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "multiconcept"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--anchors", default="spread", choices=["first", "spread"],
                   help="default anchors of the joint runs: the first kept anchor class for all, or kept classes in turn")
    p.add_argument("--order", default="size", choices=["size", "variant"], help="run order of the rows")
    p.add_argument("--erase-options", default="{}", help="JSON of extra erase options for every run (smoke tests)")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from semu_diffusion import erase, erase_concepts
    from semu_diffusion.cli import _quiet_libraries
    from semu_diffusion.evaluation import EvalConfig, run_eval
    from semu_diffusion.loading import load_pipeline

    _quiet_libraries()
    sizes = [int(x) for x in a.sizes.split(",")]
    variants = a.variants.split(",")
    compare = [c for c in a.compare_combines.split(",") if c]
    compare_at = {int(x) for x in a.compare_at.split(",") if x}
    out, work, res_path, results = open_results(a.out_dir, a.work_dir, "multiconcept.json")
    results.setdefault("singles", {})
    results.update({"per_prompt": a.per_prompt,
                    "order": ORDER, "subsets": {str(n): ORDER[:n] for n in sizes}, "combine": a.combine,
                    "rival": a.rival, "seed": a.seed})
    pipe = load_pipeline("toy")
    quiet = dict(progress=False, log=lambda *x: None, **json.loads(a.erase_options))

    def save():
        atomic.write_json(res_path, results)
        write_table(out, results)

    def evaluate(n: int, delta: Path) -> dict:
        erased = ORDER[:n]
        kept = [c for c in ALL if c not in erased]
        kept_csv = work / f"kept_n{n}.csv"
        kept_csv.write_text("prompt,label\n" + "".join(f"a photo of a {c},{c}\n" for c in kept))
        rep = run_eval(EvalConfig(model="toy", deltas=[str(delta)], prompt_sets=["toy_classes", str(kept_csv)],
                                  per_prompt=a.per_prompt, out=str(work / "eval"), seed=a.seed), log=lambda *x: None)
        v = delta.stem
        cl, kp = rep["results"]["toy_classes"], rep["results"][kept_csv.stem]
        acc, base = cl[v]["per_label_accuracy"], cl["base"]["per_label_accuracy"]
        return {"UA": sum(1 - acc[c] for c in erased) / n, "RA": sum(acc[c] for c in kept) / len(kept),
                "RA_base": sum(base[c] for c in kept) / len(kept), "UA_base": sum(1 - base[c] for c in erased) / n,
                "UA_per_class": {c: 1 - acc[c] for c in erased},
                "fd_kept_vs_base": kp[v].get("fd_clip_retained_vs_base"),
                "fd_kept_vs_real": kp[v].get("fd_clip_retained_vs_real"),
                "fd_kept_base_vs_real": kp["base"].get("fd_clip_retained_vs_real")}

    def erase_one(c: str, path: Path):
        return erase(c, pipe=pipe, out=path, seed=a.seed, **quiet)

    todo = []
    for n in sizes:
        for v in variants:
            if v == "joint":
                todo.append((n, "joint", a.combine))
                if n in compare_at:
                    todo += [(n, f"joint-{c}", c) for c in compare]
            elif v == "rival":
                todo.append((n, a.rival, None))
            else:
                todo.append((n, v, None))
    if a.order == "variant":  # every size of the main variant first: an interrupted run still has the key rows
        rank = {v: i for i, v in enumerate(["joint"] + [f"joint-{c}" for c in compare] + ["stacked", a.rival])}
        todo.sort(key=lambda x: rank.get(x[1], 99))  # stable: sizes keep their order
    for n, v, comb in todo:
        key = f"{n}/{v}"
        if key in results["rows"]:
            continue
        erased = ORDER[:n]
        path = work / "deltas" / f"n{n}-{v}.safetensors"
        print(f"[{time.strftime('%H:%M:%S')}] N={n} {v} ...", flush=True)
        if v == "stacked":
            row = stacked_delta(results["singles"], erased, lambda c: work / "deltas" / f"single-{c}.safetensors",
                                erase_one, path, save)
        else:
            t0 = time.time()
            kw = {"combine": comb, "anchors": a.anchors} if comb else {"method": v, "anchors": a.anchors}
            r = erase_concepts(erased, pipe=pipe, out=path, seed=a.seed, **kw, **quiet)
            row = {"seconds": time.time() - t0, "trainable_frac": r.stats["trainable_frac"],
                   "rank_mean": r.stats["rank_mean"], "stage_seconds": r.stats["stage_seconds"]}
        row.update({"n": n, "variant": v, "combine": comb, "erased": erased, "delta_bytes": path.stat().st_size,
                    "load_average_1min": os.getloadavg()[0]})
        t0 = time.time()
        row.update(evaluate(n, path))
        row["eval_seconds"] = time.time() - t0
        results["rows"][key] = row
        save()
        print(f"    UA {row['UA']:.3f} RA {row['RA']:.3f} (base {row['RA_base']:.3f}) {row['delta_bytes'] / 1e6:.2f} MB "
              f"{row['seconds']:.0f} s", flush=True)
    print(write_table(out, results))


def write_table(out: Path, results: dict) -> str:
    md = table(results)
    atomic.write_text(out / "multiconcept.md", md)
    return md


def table(results: dict) -> str:
    rows = sorted(results["rows"].values(), key=lambda r: (r["n"], r["variant"]))
    single1 = next((r for r in rows if r["n"] == 1 and r["variant"] == "joint"), None)
    t1 = single1["seconds"] if single1 else None
    lines = [f"# Multi-concept erasure on the toy world ({results['per_prompt']} images per prompt)", "",
             f"Machine: {results['machine']['platform']}, {results['machine']['cpus']} CPUs (shared with other jobs: "
             "seconds are indicative). Erased classes: the first N of "
             f"{', '.join(results['order'])} (nested subsets); circle and square are always kept.", "",
             "Variants: **joint** = one SEMU delta for all N concepts (subspaces combined per layer: "
             f"{results['combine']}, anchors: the kept classes in turn); **joint-first-anchor** = the same with every "
             "concept remapped to circle; **joint-sum** = the SVD of the summed unit-norm gradients instead; "
             "**stacked** = N single-concept SEMU deltas folded with `merge_deltas` (exactly equal to stacking the "
             f"adapters; seconds = the sum of the N erases); **{results['rival']}** = the rival trained jointly on the "
             "same forget set.", "",
             "UA = mean over erased classes of 1 - accuracy; RA = mean accuracy over kept classes (base in brackets); "
             "FD = FD-CLIP of kept-class images vs the base model's; time x = seconds / the N=1 SEMU erase (the joint "
             "path with one concept: the same stages and work as a single erase); load = the machine's 1-minute load "
             "average after the row (2 CPUs shared with other jobs: seconds are only comparable at similar load).", "",
             "| N | variant | UA | RA (base) | RA drop | FD kept vs base | trainable share | delta MB | seconds | time x | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fd = f"{r['fd_kept_vs_base']:.2f}" if r.get("fd_kept_vs_base") is not None else "-"
        tx = f"{r['seconds'] / t1:.2f}" if t1 else "-"
        lo = f"{r['load_average_1min']:.1f}" if r.get("load_average_1min") is not None else "-"
        lines.append(f"| {r['n']} | {r['variant']} | {r['UA']:.3f} | {r['RA']:.3f} ({r['RA_base']:.3f}) | "
                     f"{r['RA_base'] - r['RA']:+.3f} | {fd} | {r['trainable_frac']:.4f} | {r['delta_bytes'] / 1e6:.2f} | "
                     f"{r['seconds']:.0f} | {tx} | {lo} |")
    lines += ["", "UA per erased class:", ""]
    for r in rows:
        lines.append(f"- N={r['n']} {r['variant']}: " + ", ".join(f"{c} {u:.2f}" for c, u in r["UA_per_class"].items()))
    n_sizes = sorted({r["n"] for r in rows})
    lines += ["", f"Sizes measured so far: {', '.join(map(str, n_sizes))}."]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + list(results["notes"])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
