"""Cost of erasure at real scale: per-stage time, peak memory, trainable parameters and delta size of a SEMU
run, and the training-step time of rival methods as ratios to SEMU measured in the same run.

Full-size architectures (sd15, sd21, sdxl) are built from the real public configs in pipelines/configs with
random weights: cost does not depend on weight values.

    python eval/cost.py --arch toy
    python eval/cost.py --arch sd15 --resolution 256 --steps 4 --forget-n 2 --gen-steps 4
    python eval/cost.py --arch sd15 --device cuda --mixed-precision bf16 --resolution 512
    python eval/cost.py --arch sd15 --resolution 256 --targets conv-attn --name cost-sd15-cpu-convattn
    python eval/cost.py --arch sd15 --resolution 256 --flops      # FLOP shares of the target sets -> cost-flops

``--targets`` replaces the recipe's target set everywhere (training step, SVD stage, end-to-end and memory runs):
a regex over UNet module names, or a named set from TARGET_SETS (``conv-attn``: cross-attention, the transformer
projections and the resnet convolutions, as the toy recipe and the SEMU paper's "cross-attention and conv weights").
"""
# Split by what it measures (this docstring is --help, so the note is here): cost_common (target sets, child
# processes, reports), cost_step (training-step time, SVD stage, --freeze-only), cost_memory (peak memory,
# --memory-child), cost_retain (--retain-run, --retain-table), cost_profile (--profile, --flops); this file holds
# the command line, the dispatch and the main report.
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the names below are this script's public surface as before the split (tests import them from here)
from cost_common import (ROOT, TARGET_SETS, atomic, resolve_targets, sync, target_info, target_names,  # noqa: E402,F401
                         write_report)
from cost_memory import (current_rss_gb, erase_memory, memory_child, peak_rss_gb, reset_peak_rss,  # noqa: E402,F401
                         rss_gb)
from cost_profile import (flop_analysis, flop_counter, flops_markdown, flops_report, profile_markdown,  # noqa: E402,F401
                          profile_report, profile_step)
from cost_retain import RETAIN_MODES, retain_markdown, retain_run, retain_table  # noqa: E402,F401
from cost_step import freeze_only, step_inputs, step_times, svd_stage  # noqa: E402,F401


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["toy", "sd15", "sd21", "sdxl"], default="toy")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="SEMU training steps (default: the recipe's)")
    p.add_argument("--forget-n", type=int, default=None)
    p.add_argument("--gen-steps", type=int, default=None, help="sampler steps for the forget set (default: recipe's)")
    p.add_argument("--methods", default="semu,full,esd-x,salun")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--out-dir", default=str(ROOT / "eval" / "results"))
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument("--memory-methods", default="semu,full",
                   help="methods whose whole erasure's peak memory is measured, each in its own process ('' skips)")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--targets", default=None,
                   help="regex over UNet module names replacing the recipe's target set everywhere (training step, SVD "
                        f"stage, end-to-end and memory runs), or a named set: {', '.join(sorted(TARGET_SETS))}")
    p.add_argument("--name", default=None,
                   help="output file stem in --out-dir (default cost-<arch>-<device>; cost-flops with --flops)")
    p.add_argument("--profile", action="store_true",
                   help="only where the step time goes: floor (forward + input backward) vs semu vs full steps in "
                        "alternating repeats, and a torch.profiler op table of each -> <name>.{json,md}, default name "
                        "cost-<arch>-<device>-profile")
    p.add_argument("--flops", action="store_true",
                   help="only the FLOP shares of the recipe's target set, conv-attn and --targets (one forward and one "
                        "counted training step each) -> <name>.{json,md}, default name cost-flops")
    p.add_argument("--freeze-only", action="store_true",
                   help="only the training step of semu and full with and without the freeze fix, alternating in one run "
                        "(writes cost-<arch>-<device>-freeze.{json,md})")
    p.add_argument("--retain-table", default=None, metavar="MODES",
                   help="compare whole erasures (concept nudity, the recipe's retain set) with retain protection in "
                        "each of MODES (comma-separated: off, auto, exact, sketch), each in a fresh process: stage and "
                        "retain seconds, peak RSS (CPU) or peak GPU memory, delta MB -> <name>.{json,md}, default name "
                        "cost-<arch>-retain")
    p.add_argument("--retain-run", default=None, metavar="MODE", choices=list(RETAIN_MODES),
                   help="one whole erasure with retain protection MODE: seconds per stage, retain seconds, peak RSS and "
                        "peak GPU memory (torch.cuda.max_memory_allocated), delta MB; JSON to --out")
    p.add_argument("--retain-n", type=int, default=None, help="retain latents (default: the recipe's)")
    p.add_argument("--concept", default=None, help="concept of --retain-run/--retain-table (default: nudity; toy: triangle)")
    p.add_argument("--out", default=None, help="JSON output file of --retain-run")
    p.add_argument("--memory-only", action="store_true",
                   help="re-measure only the erase peak memory into the existing report in --out-dir")
    a = p.parse_args(argv)
    a.targets = resolve_targets(a.targets)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from semu_diffusion.cli import _quiet_libraries

    _quiet_libraries()
    from semu_diffusion import erase

    if a.memory_only:
        out = Path(a.out_dir)
        name = a.name or f"cost-{a.arch}-{a.device.split(':')[0]}"
        report = json.loads((out / f"{name}.json").read_text())
        report["erase_peak_memory"] = erase_memory(a, [m for m in a.memory_methods.split(",") if m])
        before = out / f"{name}-before.json"
        return write_report(out, name, report, markdown(report, json.loads(before.read_text()) if before.exists() else None))
    if a.retain_table:
        return retain_table(a)
    t_build = time.time()
    if a.arch == "toy":
        from semu_diffusion.loading import load_pipeline

        pipe = load_pipeline("toy", device=a.device)
    else:
        from semu_diffusion.fullsize import build_random_pipeline

        pipe = build_random_pipeline(a.arch, device=a.device)
        pipe.set_progress_bar_config(disable=True)
        pipe.semu_model_id = f"random-{a.arch}"
    build_seconds = time.time() - t_build
    if a.retain_run:
        rep = retain_run(a, pipe, build_seconds)
        if a.out:
            atomic.write_json(a.out, rep)
        print("RETAIN " + json.dumps(rep))
        return
    if a.memory_child:
        return memory_child(a, pipe)
    res = a.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    if a.flops:
        return flops_report(a, pipe, res)
    if a.profile:
        return profile_report(a, pipe, res)
    if a.freeze_only:
        return freeze_only(a, pipe, res)
    report = {"arch": a.arch, "device": a.device, "mixed_precision": a.mixed_precision, "resolution": res,
              "unet_params": sum(p.numel() for p in pipe.unet.parameters()), "build_seconds": build_seconds,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None},
              "targets": target_info(pipe.unet, a.targets)}
    ti = report["targets"]
    print(f"[cost] targets ({ti['source']}): {ti['layers']} layers ({ti['conv_layers']} conv), {ti['params'] / 1e6:.1f}M "
          f"params ({100 * ti['params'] / ti['unet_params']:.1f}% of the UNet): {ti['regex']}")
    print(f"[cost] {a.arch} on {a.device} ({a.mixed_precision}), {res}px, UNet {report['unet_params'] / 1e6:.1f}M params")
    if not a.skip_e2e:
        if a.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory() as td:
            r = erase("a red apple" if a.arch != "toy" else "triangle", pipe=pipe, out=Path(td) / "d.safetensors",
                      targets=a.targets, steps=a.steps, forget_n=a.forget_n, mixed_precision=a.mixed_precision, device=a.device,
                      resolution=res, gen_steps=a.gen_steps, progress=False)
        s = r.stats
        report["semu_end_to_end"] = {k: s[k] for k in ("stage_seconds", "seconds", "trainable_params", "trainable_frac",
                                                         "delta_bytes", "step_seconds", "layers", "rank_mean", "rank_max")}
        report["semu_end_to_end"]["steps"] = r.provenance["steps"]
        report["semu_end_to_end"]["forget_n"] = r.provenance["forget_n"]
        report["semu_end_to_end"]["cuda_max_allocated_gb"] = s.get("cuda_max_allocated_gb")
        report["semu_end_to_end"]["cpu_peak_rss_gb"] = rss_gb()
        print(f"[cost] SEMU end to end: {s['seconds']:.1f} s, stages {s['stage_seconds']}, delta {s['delta_bytes'] / 1e6:.2f} MB")
    report["svd_stage"] = svd_stage(pipe, a.device, targets=a.targets)
    print(f"[cost] SVD stage: {json.dumps(report['svd_stage'])}")
    methods = [m for m in a.methods.split(",") if m]
    if "semu" not in methods:
        methods = ["semu"] + methods
    report["train_step"] = step_times(pipe, methods, a.device, a.mixed_precision, res, a.repeats, a.iters,
                                      targets=a.targets)
    report["cpu_peak_rss_gb"] = rss_gb()
    report["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    mem_methods = [m for m in a.memory_methods.split(",") if m]
    if mem_methods:
        del pipe  # the children build their own model: give this process's memory back first
        import ctypes
        import gc

        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        report["erase_peak_memory"] = erase_memory(a, mem_methods)
    name = a.name or f"cost-{a.arch}-{a.device.split(':')[0]}"
    before = Path(a.out_dir) / f"{name}-before.json"
    write_report(a.out_dir, name, report, markdown(report, json.loads(before.read_text()) if before.exists() else None))


def markdown(r: dict, before: dict | None = None) -> str:
    lines = [f"# Cost: {r['arch']} on {r['device']} ({r['mixed_precision']}, {r['resolution']} px)", "",
             f"UNet parameters: {r['unet_params']:,}. Machine: {r['machine']['platform']}, {r['machine']['cpus']} CPUs"
             f"{', GPU ' + r['machine']['gpu'] if r['machine']['gpu'] else ''}, torch {r['machine']['torch']}.", ""]
    ti = r.get("targets")
    if ti:
        lines += [f"Target set ({ti['source']}): {ti['layers']} layers ({ti['conv_layers']} Conv2d), "
                  f"{ti['params']:,} parameters ({100 * ti['params'] / ti['unet_params']:.1f}% of the UNet); "
                  f"regex `{ti['regex']}`" + (f", exclude {ti['exclude']}" if ti.get("exclude") else "") + ".", ""]
    e = r.get("semu_end_to_end")
    if e:
        lines += ["## SEMU end to end", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in e["stage_seconds"].items()]
        lines += [f"| **total** | **{e['seconds']:.2f}** |", "",
                  f"{e['steps']} training steps ({e['step_seconds']:.3f} s/step), forget set of {e['forget_n']} latents, "
                  f"{e['layers']} layers, mean rank {e['rank_mean']:.1f}, trainable {e['trainable_params']:,} "
                  f"({100 * e['trainable_frac']:.4f}% of the UNet), delta {e['delta_bytes'] / 1e6:.2f} MB, "
                  f"peak CPU RSS {e['cpu_peak_rss_gb']:.1f} GB"
                  + (f", CUDA max allocated {e['cuda_max_allocated_gb']:.1f} GB" if e.get("cuda_max_allocated_gb") else "") + ".", ""]
    lines += ["## SVD stage (full target set)", "", "| solver | layers | median s | sum of ranks |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['layers']} | {v['seconds_median']:.3f} | {v['rank_sum']} |" for k, v in r["svd_stage"].items()]
    t = r["train_step"]
    lines += ["", f"## Training step, median of {t['repeats']} alternating repeats x {t['iters']} steps", "",
              "| method | s/step | ratio to semu | trainable params |", "|---|---|---|---|"]
    for m, v in t["median_step_seconds"].items():
        lines.append(f"| {m} | {v:.4f} | {t['ratio_to_semu'][m]:.2f} | {t['methods_info'][m]['trainable_params']:,} |")
    lines += ["", f"OMP_NUM_THREADS={r.get('omp_num_threads')} (torch threads {torch.get_num_threads()})."]
    med = t["median_step_seconds"]
    if "full" in med:
        lines += ["", "## SEMU step / full step", "", "| | semu s/step | full s/step | semu / full |", "|---|---|---|---|"]
        if before and "full" in before["train_step"]["median_step_seconds"]:
            b = before["train_step"]["median_step_seconds"]
            lines.append(f"| before the freeze fix (every UNet weight kept a gradient; other threads setting) | "
                         f"{b['semu']:.4f} | {b['full']:.4f} | {b['semu'] / b['full']:.2f} |")
        lines.append(f"| after (only trained parameters get gradients) | {med['semu']:.4f} | {med['full']:.4f} | "
                     f"{med['semu'] / med['full']:.2f} |")
    mem = r.get("erase_peak_memory")
    if mem:
        lines += ["", "## Peak memory of a whole erasure (one process per method; the model build's peak reset away)", "",
                  "| method | peak RSS GB | above the loaded model GB | CUDA peak GB | seconds |", "|---|---|---|---|---|"]
        for m, v in mem.items():
            cp = f"{v['cuda_peak_gb']:.2f}" if v.get("cuda_peak_gb") else "-"
            lines.append(f"| {m} | {v['peak_rss_gb']:.2f} | {v['above_base_gb']:.2f} | {cp} | {v['seconds']:.1f} |")
        staged = {m: v["stage_peak_rss_gb_sampled"] for m, v in mem.items() if v.get("stage_peak_rss_gb_sampled")}
        if staged:
            stages = list(dict.fromkeys(k for v in staged.values() for k in v))
            lines += ["", "Sampled peak RSS (GB, every 50 ms) within each erase stage:", "",
                      "| method | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
            lines += [f"| {m} | " + " | ".join(f"{v[k]:.2f}" if k in v else "-" for k in stages) + " |"
                      for m, v in staged.items()]
        if "semu" in mem and "full" in mem:
            lines += ["", f"SEMU / full: peak RSS {mem['semu']['peak_rss_gb'] / mem['full']['peak_rss_gb']:.2f}, "
                          f"working memory above the loaded model "
                          f"{mem['semu']['above_base_gb'] / max(mem['full']['above_base_gb'], 1e-9):.2f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
