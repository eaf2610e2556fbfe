"""Style erasure on the embedded toy model, the UnlearnCanvas way: erase each artist's style, one delta per style and
method, and measure with the same seeds for every row:
- UA: on the erased style's prompts, the share of images the style judge (toy-CLIP over the 8 artists + plain) no
  longer sees as that style;
- IRA: on the other 7 styles' prompts, the share still judged as their own style;
- CRA: on every style prompt, the share whose object the shape judge (toy-CLIP over the 31 classes) still gets right;
  split into the erased style's prompts (CRA own) and the other styles' (CRA other).
The prompts are prompts/toy_styles.csv (4 per style; its "plain" rows are left out); none of them is in a method's
forget set (concepts.STYLE_TEMPLATES) or retain set (prompts/toy_style_retain.txt), so nothing is tuned on them.
Rows: base (UA = the share the base model already misses), SEMU with the CLI defaults, ESD-x and SalUn (rivals: same
forget/retain sets, --rival-steps training steps, see the protocol). Writes eval/results/styles.{json,md} and
styles-grid.png (before/after). Resumable: deltas and finished rows are kept in the results file and work folder.

    python eval/styles.py                              # 8 styles x semu, esd-x, salun
    python eval/styles.py --styles Varkon --methods semu
"""
from __future__ import annotations

import argparse
import csv
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

from _common import add_run_args, cached_images, evaluate, image_grid, load_images, open_results  # noqa: E402

METHODS = {"semu": {}, "esd-x": {"method": "esd-x"}, "salun": {"method": "salun"}}  # row -> erase options
RIVALS = ("esd-x", "salun")
SET = "toy_styles_styled"  # the styled rows of prompts/toy_styles.csv


def style_prompts(work: Path) -> tuple[Path, list[dict]]:
    """prompts/toy_styles.csv without its plain rows, as a prompt set file in the work folder."""
    rows = [r for r in csv.DictReader(open(ROOT / "prompts" / "toy_styles.csv")) if r["label"] != world.PLAIN]
    path = work / f"{SET}.csv"
    atomic.write_text(path, "prompt,label\n" + "".join(f"{r['prompt']},{r['label']}\n" for r in rows))
    return path, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--styles", default=",".join(world.ARTISTS), help="artists whose style is erased, one at a time")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--per-prompt", type=int, default=4, help="images per style prompt")
    p.add_argument("--rival-styles", default=",".join(world.ARTISTS[:4]),
                   help="styles the rivals (ESD-x, SalUn) erase, 'all' for every one of --styles (default: the first "
                        "four; all 8 x 2 rivals do not fit the default run's 35-minute CPU budget)")
    p.add_argument("--rival-steps", type=int, default=100,
                   help="training steps of ESD-x and SalUn (SEMU keeps the CLI default; CPU budget)")
    add_run_args(p, "styles")
    p.add_argument("--force", action="store_true", help="erase and evaluate again even where an earlier run finished")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from semu_diffusion import erase
    from semu_diffusion.cli import _quiet_libraries
    from semu_diffusion.loading import load_pipeline

    _quiet_libraries()
    styles, methods = [s for s in a.styles.split(",") if s], [m for m in a.methods.split(",") if m]
    rs = set(a.rival_styles.split(",")) - {"all"}
    for bad, ok, what in [(set(styles) - set(world.ARTISTS), world.ARTISTS, "style"),
                          (rs - set(world.ARTISTS), world.ARTISTS, "style"), (set(methods) - set(METHODS), METHODS, "method")]:
        if bad:
            p.error(f"unknown {what} {sorted(bad)[0]!r}: use some of {', '.join(ok)}")
    out, work, res_path, results = open_results(a.out_dir, a.work_dir, "styles.json")
    prompts_csv, rows = style_prompts(work)
    extra = json.loads(a.erase_options)
    results.update({"per_prompt": a.per_prompt, "seed": a.seed, "prompts": len(rows), "rival_styles": a.rival_styles,
                    "erase_options": {m: {**METHODS[m], **({"steps": a.rival_steps} if m in RIVALS else {}), **extra}
                                      for m in METHODS},
                    "protocol": "toy world v2; eval prompts = prompts/toy_styles.csv styled rows (4 per style, none in "
                                "any forget or retain set); style judge = toy-CLIP over the 8 artists + plain; shape "
                                "judge = toy-CLIP over the 31 classes; same seeds for every row"})
    from semu_diffusion.evaluation.clipmodels import load_clip
    from semu_diffusion.evaluation.judges.classifiers import to01
    from semu_diffusion.metrics import toy_shape_classifier

    clip, tok, _ = load_clip("toy")
    shape_judge = toy_shape_classifier(clip, tok)
    objects = [r["object"] for r in rows for _ in range(a.per_prompt)]
    labels = [r["label"] for r in rows for _ in range(a.per_prompt)]

    def save():
        results["methods"] = [m for m in METHODS if any(k.startswith(m + "/") for k in results["rows"])]
        atomic.write_json(res_path, results)
        atomic.write_text(out / "styles.md", table(results))

    def measure(variant: str, delta) -> dict:
        """Style accuracy per artist (style judge) and object accuracy per image (shape judge) of one variant."""
        res = evaluate(work, delta, [str(prompts_csv)], a.per_prompt, a.seed, judges=["toy"], fd="none")[SET]
        files = cached_images(work / "eval", variant, SET)
        pred = shape_judge.classify(to01(load_images(files))).labels.tolist()
        ok = [world.SHAPE_NAMES[i] == o for i, o in zip(pred, objects)]
        return {"style_acc": res[variant]["per_label_accuracy"], "object_ok": ok}

    def figures(m: dict, artist: str) -> dict:
        own = [k for k, lb in enumerate(labels) if lb == artist]
        other = [k for k, lb in enumerate(labels) if lb != artist]
        ok = m["object_ok"]
        return {"UA": 1 - m["style_acc"][artist],
                "IRA": sum(v for s, v in m["style_acc"].items() if s != artist) / (len(m["style_acc"]) - 1),
                "CRA": sum(ok) / len(ok), "CRA_own": sum(ok[k] for k in own) / len(own),
                "CRA_other": sum(ok[k] for k in other) / len(other)}

    if "base" not in results or a.force:
        base = measure("base", None)
        results["base"] = {"style_acc": base["style_acc"], "per_style": {s: figures(base, s) for s in world.ARTISTS}}
        save()
    pipe = None
    # SEMU on every style first, then the rivals style by style: a cut run has SEMU's whole row and rivals on the
    # same styles
    rival_styles = styles if a.rival_styles == "all" else [s for s in styles if s in a.rival_styles.split(",")]
    todo = [("semu", s) for s in styles if "semu" in methods] + [(m, s) for s in rival_styles for m in methods
                                                                 if m != "semu"]
    for m, s in todo:
        key, path = f"{m}/{s}", work / "deltas" / f"{m}-{s}.safetensors"
        row = results["rows"].get(key, {})
        if "UA" in row and path.exists() and not a.force:
            continue
        if not path.exists() or "erase_seconds" not in row or a.force:
            pipe = pipe or load_pipeline("toy")
            print(f"[{time.strftime('%H:%M:%S')}] erase {s} style with {m} ...", flush=True)
            t0 = time.time()
            r = erase(f"{s} style", pipe=pipe, out=path, seed=a.seed, progress=False, log=lambda *x: None,
                      **results["erase_options"][m])
            row = {"erase_seconds": round(time.time() - t0, 1), "delta_mb": path.stat().st_size / 1e6,
                   "trainable_frac": r.stats.get("trainable_frac"), "steps": r.stats.get("steps_run"),
                   "load_average_1min": os.getloadavg()[0]}
            results["rows"][key] = row  # a run cut during the evaluation keeps the delta's erase figures
            save()
        row.update(figures(measure(path.stem, path), s))
        results["rows"][key] = row
        save()
        print(f"    UA {row['UA']:.3f} IRA {row['IRA']:.3f} CRA {row['CRA']:.3f} ({row['erase_seconds']:.0f} s)",
              flush=True)
    grid(work / "eval", results, out / "styles-grid.png", [r["label"] for r in rows], a.per_prompt)
    print(table(results))


def grid(eval_dir: Path, results: dict, path: Path, row_labels: list[str], per_prompt: int, n: int = 2) -> None:
    """Columns: n images of each style's first prompt. Rows: base; each method with the column's own style erased;
    SEMU with the first style erased (its other columns show the styles it keeps)."""
    order = list(world.ARTISTS)
    cols = [row_labels.index(s) * per_prompt + j for s in order for j in range(n)]

    def pick(variant, k):
        files = cached_images(eval_dir, variant, SET)
        return files[k] if k < len(files) else None

    rows, labels = [[pick("base", k) for k in cols]], ["base"]
    for m in results.get("methods", []):
        rows.append([pick(f"{m}-{row_labels[k // per_prompt]}", k) for k in cols])
        labels.append(f"{m} (own)")
    first = f"semu-{order[0]}"
    if (eval_dir / "images" / first).exists():
        rows.append([pick(first, k) for k in cols])
        labels.append(f"semu, {order[0]} erased")
    import numpy as np

    blank = np.full_like(load_images(rows[0][:1])[0], 255)  # a style this method has not been measured on yet
    keep = [i for i in range(len(rows)) if any(x is not None for x in rows[i])]
    image_grid([[blank if x is None else x for x in rows[i]] for i in keep], [labels[i] for i in keep], path, left=130)


def table(results: dict) -> str:
    f = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
    methods = results.get("methods", [])
    base = results.get("base", {}).get("per_style", {})
    done = {m: {s: results["rows"][f"{m}/{s}"] for s in world.ARTISTS if "UA" in results["rows"].get(f"{m}/{s}", {})}
            for m in methods}
    keys = ["UA", "IRA", "CRA", "CRA_own", "CRA_other"]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs) if rs else None  # noqa: E731
    opts = results.get("erase_options", {})
    lines = [f"Style erasure on the toy model (toy world v2; UnlearnCanvas-style; {results['prompts']} prompts = 4 per "
             f"style from prompts/toy_styles.csv, {results['per_prompt']} images each, the same seeds in every row). "
             "One delta per (method, style). UA = share of the erased style's images the style judge no longer sees as "
             "that style; IRA = style accuracy on the other 7 styles' prompts; CRA = object accuracy (shape judge) on "
             "every style prompt (own: the erased style's prompts; other: the rest). Base: the same figures for the "
             "unedited model (its UA = the share it already misses). Means over the styles measured.", "",
             "| method | styles | UA | IRA | CRA | CRA own | CRA other | delta MB | erase s (mean) | training steps |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    if base:
        lines.append(f"| base | {len(base)} | " + " | ".join(f(mean(list(base.values()), k)) for k in keys)
                     + " | – | – | – |")
    for m in methods:
        rs = list(done[m].values())
        if rs:
            steps = opts.get(m, {}).get("steps", "CLI default (250)")
            lines.append(f"| {m} | {len(rs)} | " + " | ".join(f(mean(rs, k)) for k in keys)
                         + f" | {mean(rs, 'delta_mb'):.2f} | {mean(rs, 'erase_seconds'):.0f} | {steps} |")
    rival = {s for m in methods if m != "semu" for s in done[m]}
    same = [done["semu"][s] for s in done.get("semu", {}) if s in rival]
    if rival and len(same) < len(done.get("semu", {})):
        lines.append(f"| semu, the rivals' styles | {len(same)} | " + " | ".join(f(mean(same, k)) for k in keys)
                     + f" | {mean(same, 'delta_mb'):.2f} | {mean(same, 'erase_seconds'):.0f} | CLI default (250) |")
        lines += ["", f"The rivals erase {len(rival)} of the styles ({', '.join(s for s in world.ARTISTS if s in rival)}; "
                  "`--rival-styles`, default the first four): two rivals on all 8 do not fit the default run's "
                  "35-minute CPU budget. The row above gives SEMU's means over the same styles."]
    lines += ["", "Per style: UA / IRA / CRA.", "",
              "| style | base | " + " | ".join(methods) + " |", "|---" * (len(methods) + 2) + "|"]
    for s in world.ARTISTS:
        cells = [" / ".join(f(r[k]) for k in ("UA", "IRA", "CRA")) if r else "–"
                 for r in [base.get(s)] + [done[m].get(s) for m in methods]]
        lines.append(f"| {s} ({world.STYLE_NAMES[world.ARTISTS.index(s)]}) | " + " | ".join(cells) + " |")
    sm = done.get("semu", {})
    if sm:
        ua, ira, cra = (mean(list(sm.values()), k) for k in ("UA", "IRA", "CRA"))
        verdict = lambda x, g: f"{x:.3f} {'met' if x >= g else 'missed'} (goal ≥ {g})"  # noqa: E731
        lines += ["", f"Goal (issue 23), SEMU means over {len(sm)} styles: UA {verdict(ua, 0.95)}; IRA {verdict(ira, 0.90)}; "
                  f"CRA {verdict(cra, 0.95)}."]
    if results.get("notes"):
        lines += [""] + list(results["notes"])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
