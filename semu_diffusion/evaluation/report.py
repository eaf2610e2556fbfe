"""Merging the shard files into numbers, and writing report.json, report.html (from a template) and plots."""
from __future__ import annotations

import html
import json
from pathlib import Path
from string import Template

import numpy as np

from ..metrics import frechet_distance
from .features import kid, stats
from .. import atomic


def load_shards(folder: Path, n_proc: int) -> dict:
    """Merge the per-process shard files of one (variant, set) in image-index order."""
    idx, recs, cs, feats, generated = [], {}, [], {}, 0
    for r in range(n_proc):
        d = json.loads((folder / f"rank{r}.json").read_text())
        z = np.load(folder / f"rank{r}.npz")
        idx += d["index"]
        cs += d["clip_score"]
        generated += d["generated"]
        for k, v in d["records"].items():
            recs.setdefault(k, []).extend(v)
        for k in z.files:
            if len(d["index"]):
                feats.setdefault(k, []).append(z[k])
    order = np.argsort(np.asarray(idx), kind="stable")
    if len(order) and not (np.asarray(idx)[order] == np.arange(len(idx))).all():
        raise RuntimeError(f"shard files in {folder} do not cover every image once: rerun")
    return {"records": {k: [v[i] for i in order] for k, v in recs.items()},
            "clip_score": np.asarray(cs, np.float64)[order] if cs else np.zeros(0),
            "feats": {k: np.concatenate(v)[order] for k, v in feats.items()}, "generated": generated}


def summarize(cfg, sets, plans, variants, judges, extractors, references, work: Path, n_proc: int):
    results: dict = {}
    generated = 0
    for ps in sets:
        items = plans[ps.name]
        keep = np.array([it.label != cfg.forget_label for it in items]) if cfg.forget_label else np.ones(len(items), bool)
        base_feats = {}
        for vname, _ in variants:
            d = load_shards(work / vname / ps.name, n_proc)
            generated += d["generated"]
            r: dict = {"n_images": len(items)}
            js = {}
            for j in judges:
                js[j.name] = j.summarize(d["records"][j.name], items, ps, cfg.forget_label)
            primary = next((j for j in judges if j.kind == "classifier" and "skipped" not in js[j.name]), None)
            if primary is not None:  # the first classifier judge's figures also at top level (the headline numbers)
                r.update({k: v for k, v in js[primary.name].items() if k != "n_images"})
            if keep.sum() >= 2 and len(d["clip_score"]):
                r["clip_score_retained"] = float(d["clip_score"][keep].mean())
            if cfg.fd != "none" and keep.sum() >= 2:
                for fname, f in d["feats"].items():
                    fk = f[keep]
                    ref = references.get(fname) or references.get((ps.name, fname))
                    if ref is not None:
                        r[f"fd_{fname}_retained_vs_real"] = frechet_distance(ref["mu"], ref["sigma"], *stats(fk))
                        if cfg.real_images:
                            r[f"kid_{fname}_retained_vs_real"] = kid(ref["feats"], fk, subset_size=cfg.kid_subset)[0]
                    if vname == "base":
                        base_feats[fname] = stats(fk)
                    elif fname in base_feats:
                        r[f"fd_{fname}_retained_vs_base"] = frechet_distance(*base_feats[fname], *stats(fk))
            r["judges"] = js
            results.setdefault(ps.name, {})[vname] = r
        base = results[ps.name]["base"]["judges"]
        for vname, _ in variants[1:]:
            for j in judges:
                extra = j.compare(base[j.name], results[ps.name][vname]["judges"][j.name])
                results[ps.name][vname]["judges"][j.name].update(extra)
    return results, generated


def forget_summary(res: dict) -> list[str]:
    """What a user reads first, for one prompt set's results ``{variant: figures}`` under ``--forget-label``: the
    label's detection on its own prompts, base -> each delta ("triangle drawn in 4/4 images of triangle prompts ->
    0/4"), and RA on the other prompts. Empty without a labelled forget class in the set."""
    base = res.get("base", {})
    fp, op = base.get("forget_prompts"), base.get("other_prompts")
    deltas = [(v, r) for v, r in res.items() if v != "base"]
    name = lambda v: f" ({v})" if len(deltas) > 1 else ""  # noqa: E731
    lines = []
    if fp:
        lb = fp["label"]
        after = ", ".join(f"{r['forget_prompts']['detected']}/{r['forget_prompts']['images']}{name(v)}"
                          for v, r in deltas if r.get("forget_prompts"))
        lines.append(f"{lb} drawn in {fp['detected']}/{fp['images']} images of {lb} prompts"
                     + (f" \u2192 {after}" if after else " (base model)"))
    if op:
        after = ", ".join(f"{r['RA']:.3f}{name(v)}" for v, r in deltas if "RA" in r)
        lines.append(f"RA on the other prompts ({op['images']} images): {base['RA']:.3f}"
                     + (f" \u2192 {after}" if after else " (base model)"))
    return lines


def write_json(path: Path, obj) -> None:
    atomic.write_json(path, obj)


def write_report(report: dict, sets, plans, variants, cfg, out: Path) -> None:
    write_json(out / "report.json", report)
    plot(report["results"], sets, cfg, out / "detection.png")
    write_html(report, sets, plans, variants, cfg, out / "report.html")


def plot(results, sets, cfg, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for ps in sets:
        res = results[ps.name]
        first = next(iter(res.values()))
        if "per_label_accuracy" in first:
            panels.append((ps, "labels"))
        if any("counts" in s for s in first["judges"].values()):
            panels.append((ps, "nudenet"))
    if not panels:
        if path.exists():
            path.unlink()
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    for ax, (ps, kind) in zip(axes[:, 0], panels):
        res = results[ps.name]
        w = 0.8 / len(res)
        if kind == "labels":
            labels = list(next(iter(res.values()))["per_label_accuracy"])
            for j, (v, r) in enumerate(res.items()):
                ax.bar(np.arange(len(labels)) + j * w, [r["per_label_accuracy"][lb] for lb in labels], w, label=v)
            ax.set_ylim(0, 1)
            erased = f" (erased: {cfg.forget_label})" if cfg.forget_label else ""
            ax.set_title(f"{ps.name}: detection rate per class = share of its images classified as it{erased}")
        else:
            jn = next(k for k, s in next(iter(res.values()))["judges"].items() if "counts" in s)
            labels = list(next(iter(res.values()))["judges"][jn]["counts"])
            for j, (v, r) in enumerate(res.items()):
                ax.bar(np.arange(len(labels)) + j * w, [r["judges"][jn]["counts"][c] for c in labels], w, label=v)
            ax.set_title(f"{ps.name}: NudeNet detections per exposed class (score >= {cfg.nudenet_threshold})")
        ax.set_xticks(np.arange(len(labels)) + 0.4 - w / 2, labels, rotation=30, fontsize=7)
        ax.legend()
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


PAGE = Template("""<!doctype html><html><head><meta charset='utf-8'><title>semu-eval report</title><style>
body{font-family:sans-serif;margin:20px} table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:4px 6px;font-size:13px} img{width:64px;height:64px;image-rendering:pixelated;margin:1px}
</style></head><body><h1>semu-eval report</h1>
<p>model <b>$model</b>, steps $steps, guidance $guidance, $per_prompt images per prompt, forget label <b>$forget</b>,
judges: $judges. Full numbers: <a href='report.json'>report.json</a>.</p>
$plot
$sets
</body></html>
""")


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3f}"
    return "" if v is None else html.escape(str(v))


def write_html(report, sets, plans, variants, cfg, path: Path, n_show: int = 8, max_rows: int = 50) -> None:
    esc = html.escape
    parts = []
    for ps in sets:
        res = report["results"][ps.name]
        first = next(iter(res.values()))
        cols = [k for k, v in first.items() if not isinstance(v, dict)]
        summary = forget_summary(res)  # the forget label on its own prompts, and RA on the others
        parts.append(f"<h2>{esc(ps.name)}</h2>" + (f"<p class='forget'>{'<br>'.join(esc(x) for x in summary)}</p>"
                                                   if summary else "")
                     + "<table><tr><th>variant</th>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr>")
        for v, r in res.items():
            parts.append(f"<tr><td>{esc(v)}</td>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>")
        parts.append("</table>")
        for jn, s in first["judges"].items():
            if "counts" in s:  # detector judge: per-class counts, base vs deltas with the ratio
                parts.append(f"<h3>{esc(jn)} (score &ge; {s['threshold']})</h3><table><tr><th>class</th>"
                             + "".join(f"<th>{esc(v)}</th>" for v in res) + "</tr>")
                for c in list(s["counts"]) + ["total", "share_with_exposed"]:
                    row = [(r["judges"][jn]["counts"][c] if c in s["counts"] else r["judges"][jn][c]) for r in res.values()]
                    parts.append(f"<tr><td>{esc(c)}</td>" + "".join(f"<td>{_fmt(x)}</td>" for x in row) + "</tr>")
                ratios = [r["judges"][jn].get("ratio_to_base") for r in res.values()]
                parts.append("<tr><td>total / base</td>" + "".join(f"<td>{_fmt(x)}</td>" for x in ratios) + "</tr></table>")
        parts.append("<table><tr><th>prompt</th>" + "".join(f"<th>{esc(v)}</th>" for v, _ in variants) + "</tr>")
        items = plans[ps.name]
        by_row: dict[int, list] = {}
        for it in items:
            if it.row < max_rows and len(by_row.setdefault(it.row, [])) < n_show:
                by_row[it.row].append(it)
        for row, its in by_row.items():
            parts.append(f"<tr><td>{esc(ps.rows[row].prompt)}</td>")
            for v, _ in variants:
                parts.append("<td>" + "".join(f"<img src='images/{esc(v)}/{esc(ps.name)}/{it.index:05d}_{it.seed}.png'>"
                                              for it in its) + "</td>")
            parts.append("</tr>")
        parts.append("</table>")
        if len(ps.rows) > max_rows:
            parts.append(f"<p>(first {max_rows} of {len(ps.rows)} prompts shown)</p>")
    p = report["protocol"]
    page = PAGE.substitute(model=esc(str(p["model"])), steps=p["steps"], guidance=p["guidance_scale"],
                           per_prompt=p["per_prompt"], forget=esc(str(cfg.forget_label)),
                           judges=esc(", ".join(j["name"] for j in p["judges"]) or "none"),
                           plot=("<img src='detection.png' style='width:auto;height:auto;image-rendering:auto'>"
                                 if (path.parent / "detection.png").exists() else ""),
                           sets="\n".join(parts))
    atomic.write_text(path, page)
