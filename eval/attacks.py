"""Concept-recovery attack benchmark on the toy world: the class-wise delta of every method, attacked by
``inversion`` and ``prompt-search`` at one fixed budget, with the random-embedding control and the base model.

    python eval/attacks.py                                   # triangle,star x all methods, budget 50 steps
    python eval/attacks.py --classes heart --methods semu,esd-x --steps 50

Deltas are reused from runs/attacks/deltas (or, with --erase-steps 0, runs/classwise/deltas) when present, else
erased with the method's toy defaults and --erase-steps training steps (60 by default: the 2 shared CPUs). Writes eval/results/attacks.json after every (class, variant) row (resumable: finished rows
are skipped) and eval/results/attacks.md (ASR per method and attack: mean over classes, attack seconds).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from semu_diffusion import atomic  # noqa: E402
sys.path.insert(0, str(ROOT / "eval"))
from _common import open_results  # noqa: E402
ATTACKS = ["inversion", "prompt-search", "random"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", default="triangle,star")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all registered)")
    p.add_argument("--steps", type=int, default=50, help="attack budget (optimisation steps)")
    p.add_argument("--n-images", type=int, default=12)
    p.add_argument("--n-data", type=int, default=16, help="concept images the base model generates for the attacks")
    p.add_argument("--checkpoints", type=int, default=2)
    p.add_argument("--erase-steps", type=int, default=60, help="erase steps for deltas made here (0: the recipe's 250)")
    p.add_argument("--out-dir", default=str(ROOT / "eval" / "results"))
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "attacks"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--erase-only", action="store_true", help="only make the missing deltas (e.g. in a second process)")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from semu_diffusion import erase
    from semu_diffusion.attacks import AttackConfig, run_attacks
    from semu_diffusion.cli import _quiet_libraries
    from semu_diffusion.loading import load_pipeline
    from semu_diffusion.methods import available_methods

    _quiet_libraries()
    classes = a.classes.split(",")
    methods = a.methods.split(",") if a.methods else available_methods()
    out, work, res_path, results = open_results(a.out_dir, a.work_dir, "attacks.json")
    results["protocol"] = {"budget_steps": a.steps, "n_images": a.n_images, "checkpoints": a.checkpoints, "tokens": 2,
                           "attacks": ATTACKS, "judge": "toy", "seed": a.seed, "n_data": a.n_data,
                           "erase_steps": a.erase_steps or "recipe",
                           "asr": "share of n_images attacked generations the toy judge labels as the erased class; "
                                  "best checkpoint (the attacker may use the judge); asr_final = last checkpoint"}
    pipe = load_pipeline("toy")

    def save():
        results["summary"] = summarize(results["rows"], methods)
        atomic.write_json(res_path, results, indent=1)
        atomic.write_text(out / "attacks.md", markdown(results, methods))

    for c in classes:
        todo = [m for m in ["base"] + methods if f"{m}/{c}" not in results["rows"]]
        if not todo:
            continue
        deltas = {}
        for m in todo:
            if m == "base":
                continue
            d = work / "deltas" / f"{m}-{c}.safetensors"
            old = ROOT / "runs" / "classwise" / "deltas" / d.name
            if not d.exists() and old.exists() and not a.erase_steps:
                d = old
            t0 = time.time()
            if a.erase_only and (f"{m}/{c}" in results["rows"] or d.exists()):
                continue
            if not d.exists():
                kw = {"steps": a.erase_steps} if a.erase_steps else {}
                erase(c, pipe=pipe, method=m, out=d, seed=a.seed, progress=False, log=lambda *x: None, **kw)
                print(f"erased {c} with {m} in {time.time() - t0:.1f} s", flush=True)
            deltas[d.stem] = (m, d)
        if a.erase_only:
            continue
        by_stem = {stem: m for stem, (m, _) in deltas.items()}

        def on_variant(vname, vres, c=c):
            m = "base" if vname == "base" else by_stem.get(vname, vname)
            if f"{m}/{c}" in results["rows"]:
                return
            row = {"method": m, "class": c, "no_attack": vres["no_attack"]["asr"]}
            for n in ATTACKS:
                r = vres[n]
                row[n] = {"asr": r["asr"], "asr_final": r["asr_final"], "best_step": r["best_step"],
                          "curve": [[q["step"], q["asr"]] for q in r["curve"]], "attack_seconds": r["attack_seconds"],
                          "seconds": r["seconds"], "prompt": r.get("typed_prompt") or r["prompt"]}
            results["rows"][f"{m}/{c}"] = row
            print(f"{m}/{c}: no attack {row['no_attack']:.2f}, " + ", ".join(
                f"{n} {row[n]['asr']:.2f} ({row[n]['attack_seconds']:.0f} s)" for n in ATTACKS), flush=True)
            save()

        cfg = AttackConfig(concept=c, attacks=["inversion", "prompt-search"], deltas=[str(d) for _, d in deltas.values()],
                           steps=a.steps, n_images=a.n_images, checkpoints=a.checkpoints, seed=a.seed, n_data=a.n_data,
                           out=str(work / f"report-{c}"))
        run_attacks(cfg, log=None, pipe=pipe, on_variant=on_variant)
    if not a.erase_only:
        save()


def summarize(rows: dict, methods: list[str]) -> dict:
    import numpy as np

    out = {}
    for m in ["base"] + methods:
        rs = [r for r in rows.values() if r["method"] == m]
        if not rs:
            continue
        s = {"classes": [r["class"] for r in rs], "no_attack": float(np.mean([r["no_attack"] for r in rs]))}
        for n in ATTACKS:
            s[n] = float(np.mean([r[n]["asr"] for r in rs]))
            s[f"{n}_final"] = float(np.mean([r[n]["asr_final"] for r in rs]))
            s[f"{n}_attack_seconds"] = float(np.mean([r[n]["attack_seconds"] for r in rs]))
        out[m] = s
    return out


def markdown(results: dict, methods: list[str]) -> str:
    pr = results["protocol"]
    lines = ["# Concept-recovery attacks on the toy world", "",
             f"Attack success rate (ASR): share of {pr['n_images']} attacked generations the toy judge labels as the "
             f"erased class; budget {pr['budget_steps']} steps, {pr['tokens']} tokens, best of {pr['checkpoints']} "
             "checkpoints + step 0 (final checkpoint in brackets). Mean over the classes measured; attack seconds = "
             f"optimisation time per attack ({results['machine']['cpus']} CPUs, shared). `random` = random token "
             f"embeddings (the control). Deltas: each method's toy defaults, {pr.get('erase_steps')} erase steps. "
             "Generated by `python eval/attacks.py`.", "",
             "| variant | classes | no attack | inversion | prompt-search | random | inversion s | prompt-search s |",
             "|---|---|---|---|---|---|---|---|"]
    for m, s in results.get("summary", {}).items():
        lines.append(f"| {m} | {','.join(s['classes'])} | {s['no_attack']:.2f} | {s['inversion']:.2f} "
                     f"({s['inversion_final']:.2f}) | {s['prompt-search']:.2f} ({s['prompt-search_final']:.2f}) | "
                     f"{s['random']:.2f} | {s['inversion_attack_seconds']:.1f} | {s['prompt-search_attack_seconds']:.1f} |")
    lines += ["", "Per class:", "", "| variant/class | no attack | inversion | prompt-search | random | prompt-search prompt |",
              "|---|---|---|---|---|---|"]
    for k, r in results["rows"].items():
        lines.append(f"| {k} | {r['no_attack']:.2f} | {r['inversion']['asr']:.2f} | {r['prompt-search']['asr']:.2f} | "
                     f"{r['random']['asr']:.2f} | `{r['prompt-search']['prompt']}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
