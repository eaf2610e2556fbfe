"""eval/cost.py: the cost of retain protection (--retain-run, --retain-table): whole erasures with retain off or
with each estimator of the retain subspace, each in a fresh process."""
from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from cost_common import atomic, child_command
from cost_memory import current_rss_gb, peak_rss_gb, reset_peak_rss


RETAIN_MODES = {"off": {"retain_weight": 0.0, "retain_energy": 0.0}, "auto": {"retain_estimator": "auto"},
                "auto-1pass": {"retain_estimator": "auto", "retain_sketch_passes": 1},
                "exact": {"retain_estimator": "exact"}, "sketch": {"retain_estimator": "sketch"}}


def retain_run(a, pipe, build_seconds: float) -> dict:
    """One whole erasure with retain protection ``a.retain_run`` (off: no retain term and no retain subspace; auto /
    exact / sketch: the recipe's retain term and activation subspace with that estimator): seconds per stage, the
    retain parts (retain latents, retain subspace pass), peak RSS above the loaded model, peak GPU memory, delta MB,
    and the retain share of the erase, measured and extrapolated to the recipe's step count."""
    import gc

    from semu_diffusion import erase
    from semu_diffusion.recipes import recipe_for

    gc.collect()
    base = current_rss_gb()
    reset_peak_rss()
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated() / 2**30
    concept = a.concept or ("triangle" if a.arch == "toy" else "nudity")
    with tempfile.TemporaryDirectory() as td:
        r = erase(concept, pipe=pipe, out=Path(td) / "d.safetensors", steps=a.steps, forget_n=a.forget_n,
                  retain_n=a.retain_n, mixed_precision=a.mixed_precision, device=a.device, resolution=a.resolution,
                  gen_steps=a.gen_steps, targets=a.targets, progress=False, log=lambda *x: None,
                  **RETAIN_MODES[a.retain_run])
    st = r.stats
    rs = r.provenance.get("method_info", {}).get("retain_subspace") or {}
    retain_s = sum(st["retain_seconds"].values())
    rec_steps = recipe_for(pipe.unet.config).train.get("steps", 200)
    step_s = st["step_seconds"]
    extra = max(0, rec_steps - (st["steps_run"] or 0)) * step_s
    rep = {"arch": a.arch, "device": a.device, "mixed_precision": a.mixed_precision, "mode": a.retain_run,
           "concept": concept, "resolution": a.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor,
           "steps": st["steps_run"], "forget_n": st["forget_latents"], "build_seconds": build_seconds,
           "stage_seconds": st["stage_seconds"], "retain_seconds": st["retain_seconds"], "erase_seconds": st["seconds"],
           "step_seconds": step_s, "retain_share": retain_s / st["seconds"],
           "recipe_steps": rec_steps, "erase_seconds_at_recipe_steps": st["seconds"] + extra,
           "retain_share_at_recipe_steps": retain_s / (st["seconds"] + extra),
           "base_rss_gb": base, "peak_rss_gb": peak_rss_gb(), "peak_rss_above_model_gb": peak_rss_gb() - base,
           "delta_mb": st["delta_bytes"] / 1e6, "layers": st["layers"], "rank_mean": st["rank_mean"],
           "retain_energy_reached_min": rs.get("energy_reached_min"),
           "retain_energy_reached_mean": rs.get("energy_reached_mean"),
           "retain_layers_below_target": rs.get("layers_below_target"), "sketched_layers": rs.get("sketched_layers"),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__}
    if a.device.startswith("cuda"):
        rep.update({"gpu": torch.cuda.get_device_name(), "cuda_peak_gb": torch.cuda.max_memory_allocated() / 2**30,
                    "cuda_model_gb": cuda_base})
    return rep


def retain_table(a) -> None:
    """--retain-table: each mode's whole erasure in a fresh process (its own peak RSS), then the table."""
    import subprocess

    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = a.name or f"cost-{a.arch}-retain"
    rows = {}
    for mode in [m for m in a.retain_table.split(",") if m]:
        if mode not in RETAIN_MODES:
            raise SystemExit(f"error: --retain-table mode {mode!r}: use {', '.join(RETAIN_MODES)}")
        with tempfile.TemporaryDirectory() as td:
            cmd = child_command(a, "--retain-run", mode, "--out", str(Path(td) / "r.json"),
                                extra_flags=("--retain-n", "--concept"))
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            rows[mode] = json.loads((Path(td) / "r.json").read_text())
        print(f"[cost] retain {mode}: {json.dumps(rows[mode])}", flush=True)
        rep = {"arch": a.arch, "device": a.device, "modes": rows, "machine": platform.platform()}
        atomic.write_json(out / f"{name}.json", rep)
    md = retain_markdown(rep)
    atomic.write_text(out / f"{name}.md", md)
    print(md)


def retain_markdown(rep: dict) -> str:
    rows = rep["modes"]
    any_row = next(iter(rows.values()))
    lines = [f"# Retain protection cost: {rep['arch']}, {any_row['resolution']} px, {rep['device']}, "
             f"{any_row['mixed_precision']}, concept {any_row['concept']!r}", "",
             f"{any_row['steps']} training steps, {any_row['forget_n']} forget latents; random weights from the real "
             "config; one fresh process per row; OMP_NUM_THREADS=" + str(any_row.get("omp_num_threads")), "",
             "| retain | retain latents s | retain subspace s | whole erase s | retain share | share at recipe steps "
             "(extrapolated) | peak RSS GB (above model) | delta MB | min energy reached | sketched layers |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m, r in rows.items():
        rs = r["retain_seconds"]
        e = r.get("retain_energy_reached_min")
        lines.append(f"| {m} | {rs.get('retain_set', 0):.1f} | {rs.get('retain_subspace', 0):.1f} | "
                     f"{r['erase_seconds']:.1f} | {r['retain_share']:.1%} | {r['retain_share_at_recipe_steps']:.1%} "
                     f"({r['recipe_steps']} steps) | {r['peak_rss_gb']:.2f} ({r['peak_rss_above_model_gb']:.2f}) | "
                     f"{r['delta_mb']:.2f} | {'' if e is None else f'{e:.4f}'} | {r.get('sketched_layers') or 0} |")
    lines.append("\nStage seconds per row: " + "; ".join(f"{m}: {json.dumps(r['stage_seconds'])}" for m, r in rows.items()))
    return "\n".join(lines) + "\n"
