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
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from semu_diffusion import atomic  # noqa: E402

# named target sets for --targets (anything else is taken as a regex over UNet module names)
TARGET_SETS = {
    "conv-attn": r"attn2\.to_(q|k|v|out\.0)$|attentions\.\d+\.proj_(in|out)$|resnets\.\d+\.(conv1|conv2|conv_shortcut)$",
}


def resolve_targets(spec: str | None) -> str | None:
    """The regex of a --targets value (a TARGET_SETS name or a regex); None or '' or 'recipe' keeps the recipe's."""
    import re

    if spec in (None, "", "recipe"):
        return None
    rx = TARGET_SETS.get(spec, spec)
    try:
        re.compile(rx)
    except re.error as e:
        raise SystemExit(f"error: --targets {spec!r} is not a valid regular expression ({e}); "
                         f"pass a regex or one of {sorted(TARGET_SETS)}")
    return rx


def target_names(unet, targets: str | None = None) -> list[str]:
    """The target modules: those matching ``targets`` (a regex) if given, else the recipe's include/exclude, as
    erase() selects them."""
    from semu_diffusion.recipes import recipe_for, select_targets

    if targets:
        return select_targets(unet, [targets])
    rec = recipe_for(unet.config)
    return select_targets(unet, rec.include, rec.exclude)


def target_info(unet, targets: str | None = None) -> dict:
    """What a target set is: its regex (or the recipe's include list), its layers and their weight parameters (what
    `full` trains, and what its Adam state is three times of), biases apart."""
    from semu_diffusion.recipes import recipe_for

    names = target_names(unet, targets)
    rec = recipe_for(unet.config)
    mods = [unet.get_submodule(n) for n in names]
    return {"source": "--targets" if targets else f"recipe {rec.family}",
            "regex": targets if targets else "|".join(rec.include), "exclude": [] if targets else list(rec.exclude),
            "layers": len(names), "conv_layers": sum(m.weight.dim() == 4 for m in mods),
            "params": sum(m.weight.numel() for m in mods),
            "bias_params": sum(m.bias.numel() for m in mods if m.bias is not None),
            "unet_params": sum(p.numel() for p in unet.parameters())}


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def current_rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs), so that building the model
    does not count in the erasure's peak. Returns whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_gb() -> float:
    """VmHWM (peak RSS since the last reset) from /proc/self/status, else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                if ln.startswith("VmHWM:"):
                    return int(ln.split()[1]) / 2**20
    except OSError:
        pass
    return rss_gb()


def erase_memory(a, methods: list[str]) -> dict:
    """Peak memory of one whole erasure per method, each in a fresh process: peak RSS from the end of the model
    build (the build's own peak is reset away) to the end of the erasure, and that peak above the RSS of the loaded
    model (the erasure's own working memory)."""
    import subprocess

    res = {}
    for m in methods:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--arch", a.arch, "--device", a.device,
               "--mixed-precision", a.mixed_precision, "--memory-child", m]
        for flag, v in (("--resolution", a.resolution), ("--steps", a.steps), ("--forget-n", a.forget_n),
                        ("--gen-steps", a.gen_steps), ("--targets", a.targets)):
            if v is not None:
                cmd += [flag, str(v)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        line = [ln for ln in out.splitlines() if ln.startswith("MEMORY ")][-1]
        r = json.loads(line[len("MEMORY "):])
        r["above_base_gb"] = r["peak_rss_gb"] - r["base_rss_gb"]
        res[m] = r
        print(f"[cost] peak memory of a {m} erasure: {r['peak_rss_gb']:.2f} GB RSS ({r['above_base_gb']:.2f} GB above the loaded model)"
              + (f"; sampled peak per stage {json.dumps({k: round(v, 2) for k, v in r['stage_peak_rss_gb_sampled'].items()})}"
                 if r.get("stage_peak_rss_gb_sampled") else ""))
    return res


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
            cmd = [sys.executable, str(Path(__file__).resolve()), "--arch", a.arch, "--device", a.device,
                   "--mixed-precision", a.mixed_precision, "--retain-run", mode, "--out", str(Path(td) / "r.json")]
            for flag, v in (("--resolution", a.resolution), ("--steps", a.steps), ("--forget-n", a.forget_n),
                            ("--gen-steps", a.gen_steps), ("--targets", a.targets), ("--retain-n", a.retain_n),
                            ("--concept", a.concept)):
                if v is not None:
                    cmd += [flag, str(v)]
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


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_inputs(pipe, device: str, resolution: int, targets: str | None):
    """What a timed training step runs on: the recipe, the target names, one prompt's embedding, a random latent
    z0 and target (batch 1) at ``resolution``, t = 500, and the seeded generator (for further draws)."""
    from semu_diffusion.recipes import recipe_for
    from semu_diffusion.trainer import Conditioner

    unet = pipe.unet
    h = resolution // pipe.vae_scale_factor
    g = torch.Generator("cpu").manual_seed(0)
    z0 = torch.randn(1, unet.config.in_channels, h, h, generator=g).to(device)
    target = torch.randn(z0.shape, generator=g).to(device)
    return {"rec": recipe_for(unet.config), "names": target_names(unet, targets),
            "cond": Conditioner(pipe, device).embed(["a photo of a thing"]), "z0": z0, "target": target,
            "t": torch.tensor([500], device=device), "g": g}


def step_times(pipe, methods: list[str], device: str, mixed_precision: str, resolution: int, repeats: int, iters: int,
               log=print, targets: str | None = None) -> dict:
    """Median seconds per training step (forward + backward + Adam) for each method, alternating methods."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from semu_diffusion import objectives as O
    from semu_diffusion.methods import MethodConfig, get_method
    from semu_diffusion.trainer import Conditioner, cast_frozen, forget_gradient, frozen, restore_frozen, unet_eps

    if AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(mixed_precision=mixed_precision, cpu=device == "cpu")
    unet = pipe.unet
    si = step_inputs(pipe, device, resolution, targets)
    rec, names, cond, z0, target, t = si["rec"], si["names"], si["cond"], si["z0"], si["target"], si["t"]
    unc = Conditioner(pipe, device).embed([""])
    acp = pipe.scheduler.alphas_cumprod.to(device)
    zt = O.add_noise(z0, torch.randn(z0.shape, generator=si["g"]).to(device), t, acp)
    from semu_diffusion.trainer import TrainConfig

    need = sorted({n for m in methods for n in get_method(m.split("@")[0])(MethodConfig()).gradient_targets(unet, names)}
                  | set(names))
    t0 = time.time()
    grads = forget_gradient(unet, z0.cpu(), acp, cond, unc, need, TrainConfig(batch_size=1, forget_n=1), device,
                            acc.autocast, progress=False)
    grad_seconds = time.time() - t0
    grads = {k: v.half() for k, v in grads.items()}  # only ranks/masks are derived from them here: halve the memory
    cfg = MethodConfig(tau=rec.semu.get("tau", 0.95), r_max=rec.semu.get("r_max"))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision)
    times: dict[str, list[float]] = {m: [] for m in methods}
    info: dict[str, dict] = {}
    for rep in range(repeats):
        for m in methods:
            meth = get_method(m.split("@")[0])(cfg)
            # as erase() does: only the method's own parameters get gradients ("<method>@nofreeze": the behaviour
            # before the freeze fix, every UNet weight left trainable as load_pipeline gives it)
            freeze = frozen(unet) if not m.endswith("@nofreeze") else __import__("contextlib").nullcontext()
            freeze.__enter__()
            if m.endswith("@nofreeze"):
                unet.requires_grad_(True)
            params = meth.setup(unet, names, grads)
            saved = cast_frozen(unet, dtype) if dtype else {}
            opt = torch.optim.Adam(params, lr=1e-6)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            try:
                for k in range(iters + 1):  # first iteration warms up (allocations, Adam state)
                    sync(device)
                    s = time.time()
                    with acc.autocast():
                        loss = O.remap_loss(unet_eps(unet, zt, t, cond), target)
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    sync(device)
                    if k > 0:
                        times[m].append(time.time() - s)
                info[m] = {"trainable_params": meth.trainable_numel(),
                           "cuda_peak_gb": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None}
            finally:
                del opt
                restore_frozen(unet, saved)
                meth.restore(unet)
                freeze.__exit__(None, None, None)
                for q in unet.parameters():
                    q.grad = None
            log(f"  rep {rep + 1}/{repeats} {m}: {statistics.median(times[m][-iters:]):.3f} s/step")
    med = {m: statistics.median(v) for m, v in times.items()}
    return {"median_step_seconds": med, "ratio_to_semu": {m: med[m] / med["semu"] for m in methods},
            "all_step_seconds": times, "methods_info": info, "gradient_all_weights_seconds": grad_seconds,
            "repeats": repeats, "iters": iters}


def svd_stage(pipe, device: str, repeats: int = 3, targets: str | None = None) -> dict:
    """Time of the SVD + rank-selection stage over the full target set (gradient values do not change the cost)."""
    from semu_diffusion.recipes import recipe_for
    from semu_diffusion.svd import gradient_subspaces

    unet = pipe.unet
    rec = recipe_for(unet.config)
    names = target_names(unet, targets)
    g = torch.Generator("cpu").manual_seed(1)
    grads = {n: torch.randn(unet.get_submodule(n).weight.shape, generator=g).to(device) for n in names}
    weights = {n: unet.get_submodule(n).weight.detach().float() for n in names}
    out = {}
    for solver in ("auto", "full") if device.startswith("cuda") or len(names) < 100 else ("auto",):
        ts = []
        for _ in range(repeats):
            sync(device)
            s = time.time()
            subs = gradient_subspaces(grads, rec.semu.get("tau", 0.95), 1, rec.semu.get("r_max"), weights=weights,
                                      device=device, solver=solver)
            sync(device)
            ts.append(time.time() - s)
        out[solver] = {"seconds_median": statistics.median(ts), "seconds": ts,
                       "rank_sum": sum(s.rank for s in subs.values()), "layers": len(names)}
    return out


def profile_step(pipe, resolution: int, targets: str | None, device: str = "cpu", repeats: int = 3,
                 log=print) -> dict:
    """Where a training step's time goes: alternating repeats of (a) the floor both methods share (frozen UNet,
    forward + input-gradient backward only, no trainable parameter), (b) a SEMU step, (c) a `full` step
    (forward + backward + Adam), then one torch.profiler step of SEMU and of full: the top operators by self CPU time
    and SEMU's low-rank-branch operators (convolutions/matmuls with a rank-sized dimension) picked out by shape."""
    from torch.profiler import ProfilerActivity, profile

    from semu_diffusion import objectives as O
    from semu_diffusion.methods import MethodConfig, get_method
    from semu_diffusion.trainer import frozen, unet_eps

    unet = pipe.unet
    si = step_inputs(pipe, device, resolution, targets)
    rec, names, cond, zt, target, t = si["rec"], si["names"], si["cond"], si["z0"], si["target"], si["t"]
    cfg = MethodConfig(tau=rec.semu.get("tau", 0.95), r_max=rec.semu.get("r_max"))
    gen = torch.Generator("cpu").manual_seed(1)
    grads = {n: torch.randn(unet.get_submodule(n).weight.shape, generator=gen).half() for n in names}

    def one_step(opt, x_grad: bool):
        x = zt.detach().requires_grad_(x_grad)
        sync(device)
        s0 = time.time()
        loss = O.remap_loss(unet_eps(unet, x, t, cond), target)
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(device)
        return time.time() - s0

    times = {"floor": [], "semu": [], "full": []}
    prof_tables = {}
    branch = {}
    for rep in range(repeats + 1):  # the last round is the profiled one
        for m in ("floor", "semu", "full"):
            with frozen(unet):
                meth = None if m == "floor" else get_method(m)(cfg)
                params = [] if meth is None else meth.setup(unet, names, {n: v.float() for n, v in grads.items()}
                                                           if m == "semu" else None)
                opt = torch.optim.Adam(params, lr=1e-6) if params else None
                try:
                    one_step(opt, m == "floor")  # warm-up (allocations, Adam state)
                    if rep < repeats:
                        times[m].append(one_step(opt, m == "floor"))
                        log(f"  [profile] rep {rep + 1}/{repeats} {m}: {times[m][-1]:.3f} s/step")
                    elif m != "floor":
                        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as pr:
                            one_step(opt, False)
                        ev = pr.key_averages()
                        tot = sum(e.self_cpu_time_total for e in ev)
                        top = sorted(ev, key=lambda e: -e.self_cpu_time_total)[:12]
                        prof_tables[m] = {"total_self_cpu_s": tot / 1e6,
                                          "top": [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6,
                                                   "share": e.self_cpu_time_total / tot, "calls": e.count} for e in top]}
                        if m == "semu":
                            ranks = {int(layer.rank) for layer in meth.layers.values()}
                            bt = 0.0
                            for e in pr.key_averages(group_by_input_shape=True):
                                if "conv" not in e.key and e.key not in ("aten::mm", "aten::addmm", "aten::bmm"):
                                    continue
                                shp = [tuple(x) for x in e.input_shapes if isinstance(x, (list, tuple)) and x]
                                if "conv" in e.key:  # a kernel (4-D, <= 3x3) with a rank-sized channel count
                                    hit = any(len(sh) == 4 and sh[2] <= 3 and sh[3] <= 3 and {sh[0], sh[1]} & ranks
                                              for sh in shp)
                                else:  # a rank-sized dimension anywhere but the first input's leading one
                                    hit = bool({d for i, sh in enumerate(shp) for d in (sh[1:] if i == 0 else sh)}
                                               & ranks)
                                if hit:
                                    bt += e.self_cpu_time_total
                            branch = {"branch_self_cpu_s": bt / 1e6, "share_of_step": bt / tot,
                                      "ranks": sorted(ranks)}
                finally:
                    if meth is not None:
                        meth.restore(unet)
                    for q in params:
                        q.grad = None
                    del opt
    med = {m: statistics.median(v) for m, v in times.items()}
    return {"targets": target_info(unet, targets), "resolution": resolution, "repeats": repeats,
            "median_step_seconds": med, "all_step_seconds": times,
            "semu_over_full": med["semu"] / med["full"], "semu_over_floor": med["semu"] / med["floor"],
            "full_over_floor": med["full"] / med["floor"], "profile": prof_tables, "semu_branch": branch,
            "note": "SEMU subspaces from random gradients: every layer at r_max (worst case for the branches)"}


def flop_counter(depth: int | None = None):
    """torch's FlopCounterMode, plus the CPU flash-attention kernels that it has no formula for (torch 2.x counts
    SDPA only on its CUDA kernels, so on CPU the attention matmuls would be missing)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    extra = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        def fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

        def bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

        extra[aten._scaled_dot_product_flash_attention_for_cpu] = fwd
        extra[aten._scaled_dot_product_flash_attention_for_cpu_backward] = bwd
    return fc.FlopCounterMode(display=False, depth=depth, custom_mapping=extra)


def flop_analysis(pipe, resolution: int, target_sets: dict[str, str | None], device: str = "cpu",
                  step_methods: tuple[str, ...] = ("semu", "full"), log=print) -> dict:
    """FLOPs of one UNet forward (batch 1, fp32) and the share of it in each target set, with the best-case
    semu/full step ratio that share allows: both methods run the forward F and the input-gradient backward (~F);
    `full` adds the target layers' weight gradients (~F_targets), SEMU only its tiny low-rank branches, so
    semu/full >= 2F / (2F + F_targets). Also the FLOPs of one real training step (forward + backward, counted by
    torch.utils.flop_counter) of each method on each set; SEMU's subspaces come from random gradients, which give
    every layer the largest rank (r_max), so its low-rank branches are counted at their worst. Adam's elementwise
    work is not a FLOP the counter sees."""
    import torch.nn as nn

    from semu_diffusion import objectives as O
    from semu_diffusion.methods import MethodConfig, get_method
    from semu_diffusion.recipes import recipe_for
    from semu_diffusion.trainer import Conditioner, frozen, unet_eps

    unet = pipe.unet
    rec = recipe_for(unet.config)
    cond = Conditioner(pipe, device).embed(["a photo of a thing"])
    h = resolution // pipe.vae_scale_factor
    g = torch.Generator("cpu").manual_seed(0)
    zt = torch.randn(1, unet.config.in_channels, h, h, generator=g).to(device)
    target = torch.randn(zt.shape, generator=g).to(device)
    t = torch.tensor([500], device=device)
    prefix = type(unet).__name__ + "."
    s0 = time.time()
    fc = flop_counter()
    with torch.no_grad(), fc:
        unet_eps(unet, zt, t, cond)
    counts = fc.get_flop_counts()
    total = fc.get_total_flops()

    def mod_flops(c: dict, n: str) -> int:
        return int(sum(c.get(prefix + n, {}).values()))

    convlin = [n for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    rep = {"resolution": resolution, "latent": list(zt.shape), "forward_flops": int(total),
           "forward_seconds": time.time() - s0,
           "conv_linear_forward_flops": sum(mod_flops(counts, n) for n in convlin),
           "by_op": {str(k): int(v) for k, v in counts.get("Global", {}).items()}, "sets": {}}
    log(f"[flops] UNet forward at {resolution} px: {total / 1e9:.1f} GFLOP "
        f"({100 * rep['conv_linear_forward_flops'] / total:.1f}% in Linear/Conv2d modules)")
    cfg = MethodConfig(tau=rec.semu.get("tau", 0.95), r_max=rec.semu.get("r_max"))
    for label, rx in target_sets.items():
        names = target_names(unet, rx)
        ft = sum(mod_flops(counts, n) for n in names)
        e = {**target_info(unet, rx), "target_forward_flops": ft, "share": ft / total,
             "ratio_bound": 2 * total / (2 * total + ft), "step_flops": {}}
        for m in step_methods:
            meth = get_method(m)(cfg)
            with frozen(unet):
                gen = torch.Generator("cpu").manual_seed(1)
                grads = ({n: torch.randn(unet.get_submodule(n).weight.shape, generator=gen).to(device) for n in names}
                         if m == "semu" else None)
                params = meth.setup(unet, names, grads)
                del grads
                try:
                    s1 = time.time()
                    fc2 = flop_counter()
                    with fc2:
                        loss = O.remap_loss(unet_eps(unet, zt, t, cond), target)
                        loss.backward()
                    st = {"flops": int(fc2.get_total_flops()), "seconds": time.time() - s1,
                          "trainable_params": meth.trainable_numel()}
                    if m == "semu":
                        # the low-rank branches' forward: each SEMU layer's count less its base layer's (module
                        # attribution is only reliable in the forward, so a separate no-grad forward)
                        fc3 = flop_counter()
                        with torch.no_grad(), fc3:
                            unet_eps(unet, zt, t, cond)
                        c3 = fc3.get_flop_counts()
                        st["low_rank_branch_forward_flops"] = sum(mod_flops(c3, n) - mod_flops(c3, n + ".base")
                                                                  for n in meth.layers)
                        st["rank_mean"] = statistics.mean(int(layer.rank) for layer in meth.layers.values())
                    e["step_flops"][m] = st
                finally:
                    meth.restore(unet)
                    for q in params:
                        q.grad = None
            log(f"[flops] {label} {m} step: {st['flops'] / 1e9:.1f} GFLOP ({st['seconds']:.1f} s)")
        sf = e["step_flops"]
        if "semu" in sf and "full" in sf:
            e["step_flop_ratio"] = sf["semu"]["flops"] / sf["full"]["flops"]
        rep["sets"][label] = e
        log(f"[flops] {label}: {e['layers']} layers, {e['params'] / 1e6:.1f}M params, {100 * e['share']:.1f}% of the "
            f"forward FLOPs, semu/full bound {e['ratio_bound']:.2f}"
            + (f", counted step ratio {e['step_flop_ratio']:.2f}" if "step_flop_ratio" in e else ""))
    return rep


def profile_markdown(r: dict) -> str:
    ti, med = r["targets"], r["median_step_seconds"]
    lines = [f"# Where the step time goes: {r['arch']} on {r['device']}, {r['resolution']} px, batch 1, "
             f"OMP_NUM_THREADS={r['omp_num_threads']}", "",
             f"Targets ({ti['source']}): {ti['layers']} layers ({ti['conv_layers']} conv), {ti['params']:,} weights; "
             f"regex `{ti['regex']}`.", "",
             f"Median of {r['repeats']} alternating repeats, one step each after a warm-up step. floor = frozen UNet, "
             "forward + input-gradient backward only (what both methods must do).", "",
             "| | floor | semu | full | semu / full | semu / floor | full / floor |", "|---|---|---|---|---|---|---|",
             f"| s/step | {med['floor']:.3f} | {med['semu']:.3f} | {med['full']:.3f} | {r['semu_over_full']:.2f} | "
             f"{r['semu_over_floor']:.2f} | {r['full_over_floor']:.2f} |", ""]
    b = r.get("semu_branch")
    if b:
        lines += [f"SEMU's low-rank branch operators (conv/matmul with a rank-sized dimension, ranks {b['ranks']}) in "
                  f"the profiled step: {b['branch_self_cpu_s']:.3f} s self CPU, {100 * b['share_of_step']:.1f}% of "
                  "the step.", ""]
    for m, pt in r["profile"].items():
        lines += [f"## torch.profiler, one {m} step ({pt['total_self_cpu_s']:.2f} s self CPU in all)", "",
                  "| op | self CPU s | share | calls |", "|---|---|---|---|"]
        lines += [f"| {e['op']} | {e['self_cpu_s']:.3f} | {100 * e['share']:.1f}% | {e['calls']} |" for e in pt["top"]]
        lines.append("")
    lines.append(r["note"] + ".")
    return "\n".join(lines) + "\n"


def flops_markdown(r: dict, arch: str) -> str:
    F = r["forward_flops"]
    lines = [f"# FLOP shares of the target sets: {arch} UNet, {r['resolution']} px, batch 1", "",
             f"One UNet forward (latent {'x'.join(map(str, r['latent']))}, fp32, counted by torch.utils.flop_counter): "
             f"**{F / 1e9:.4g} GFLOP**, {100 * r['conv_linear_forward_flops'] / F:.1f}% of it in Linear/Conv2d modules "
             f"(the rest: attention score/value matmuls).", "",
             "Both SEMU and `full` run the whole forward F and the input-gradient backward (~F, every layer above the "
             "first target); `full` adds the target layers' weight gradients (~F_targets, the targets' share of the "
             "forward) and Adam over their parameters, SEMU only its rank-r branches. So the best case is "
             "semu/full >= 2F / (2F + F_targets).", "",
             "| target set | layers (conv) | params | target forward GFLOP | share of F | bound semu/full >= | "
             "counted step GFLOP semu | full | semu/full (FLOPs) | SEMU low-rank branches, forward GFLOP (mean rank) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, e in r["sets"].items():
        sf = e["step_flops"]
        se, fu = sf.get("semu"), sf.get("full")
        lines.append(
            f"| {label} | {e['layers']} ({e['conv_layers']}) | {e['params'] / 1e6:.1f}M | {e['target_forward_flops'] / 1e9:.3g} | "
            f"{100 * e['share']:.1f}% | {e['ratio_bound']:.2f} | {se['flops'] / 1e9 if se else float('nan'):.4g} | "
            f"{fu['flops'] / 1e9 if fu else float('nan'):.4g} | {e.get('step_flop_ratio', float('nan')):.2f} | "
            + (f"{se['low_rank_branch_forward_flops'] / 1e9:.3g} ({se['rank_mean']:.1f})" if se else "-") + " |")
    lines += ["", "Wall time of those single counted steps (one run each, under the counter, shared machine; no Adam): "
              + "; ".join(f"{label} semu {e['step_flops']['semu']['seconds']:.1f} s, full "
                          f"{e['step_flops']['full']['seconds']:.1f} s" for label, e in r["sets"].items()
                          if {"semu", "full"} <= set(e["step_flops"]))
              + ". On CPU the weight-gradient convolutions run at a lower FLOP rate than the forward and input-gradient "
              "ones, so `full`'s extra time exceeds its FLOP share even before Adam.", "", "Regexes:", ""]
    lines += [f"- {label}: `{e['regex']}`" for label, e in r["sets"].items()]
    lines += ["", "The counted step is one forward + backward (no Adam: elementwise, not counted as FLOPs; its time is in "
              "the measured steps of the cost tables). SEMU's subspaces here come from random gradients, which hit "
              "r_max in every layer, so its branch FLOPs are the worst case (real forget gradients give mean rank ~4)."]
    return "\n".join(lines) + "\n"


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
        atomic.write_json(out / f"{name}.json", report)
        before = out / f"{name}-before.json"
        md = markdown(report, json.loads(before.read_text()) if before.exists() else None)
        atomic.write_text(out / f"{name}.md", md)
        print(md)
        return
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
        import gc

        gc.collect()
        import threading

        base = current_rss_gb()
        reset = reset_peak_rss()
        samples: list[tuple[float, float]] = []  # (time, RSS GB) every 50 ms: which stage holds the peak
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                samples.append((time.time(), current_rss_gb()))
                stop.wait(0.05)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        t0 = time.time()
        try:
            with tempfile.TemporaryDirectory() as td:
                r = erase("a red apple" if a.arch != "toy" else "triangle", pipe=pipe, method=a.memory_child,
                          targets=a.targets, out=Path(td) / "d.safetensors", steps=a.steps, forget_n=a.forget_n,
                          mixed_precision=a.mixed_precision, device=a.device, resolution=a.resolution,
                          gen_steps=a.gen_steps, progress=False, log=lambda *x: None)
        finally:
            stop.set()
            th.join()
        # stage windows from the stage times laid end to end from the start (prepare's few ms unaccounted)
        stage_peak, start = {}, t0
        for k, v in r.stats["stage_seconds"].items():
            inside = [g for tt, g in samples if start <= tt < start + v]
            if inside:
                stage_peak[k] = max(inside)
            start += v
        print("MEMORY " + json.dumps({"method": a.memory_child, "base_rss_gb": base, "peak_rss_gb": peak_rss_gb(),
                                      "peak_reset_after_build": reset, "stage_peak_rss_gb_sampled": stage_peak,
                                      "cuda_peak_gb": r.stats.get("cuda_max_allocated_gb"), "seconds": r.stats["seconds"]}))
        return
    res = a.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    if a.flops:
        sets = {"recipe": None, "conv-attn": TARGET_SETS["conv-attn"]}
        if a.targets and a.targets not in sets.values():
            sets["--targets"] = a.targets
        rep = {"arch": a.arch, "device": a.device, **flop_analysis(pipe, res, sets, a.device),
               "torch": torch.__version__}
        out = Path(a.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        name = a.name or "cost-flops"
        atomic.write_json(out / f"{name}.json", rep)
        md = flops_markdown(rep, a.arch)
        atomic.write_text(out / f"{name}.md", md)
        print(md)
        return
    if a.profile:
        rep = {"arch": a.arch, "device": a.device, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               **profile_step(pipe, res, a.targets, a.device, a.repeats), "torch": torch.__version__}
        out = Path(a.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        name = a.name or f"cost-{a.arch}-{a.device.split(':')[0]}-profile"
        atomic.write_json(out / f"{name}.json", rep)
        md = profile_markdown(rep)
        atomic.write_text(out / f"{name}.md", md)
        print(md)
        return
    if a.freeze_only:
        ms = ["semu@nofreeze", "full@nofreeze", "semu", "full"]
        t = step_times(pipe, ms, a.device, a.mixed_precision, res, a.repeats, a.iters, targets=a.targets)
        med = t["median_step_seconds"]
        rep = {"arch": a.arch, "device": a.device, "resolution": res, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "train_step": t, "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
        out = Path(a.out_dir)
        name = a.name or f"cost-{a.arch}-{a.device.split(':')[0]}-freeze"
        atomic.write_json(out / f"{name}.json", rep)
        md = [f"# Freeze fix, one run: {a.arch} on {a.device}, {res} px, batch 1, OMP_NUM_THREADS={rep['omp_num_threads']}",
              "", f"Median of {a.repeats} alternating repeats x {a.iters} steps (forward + backward + Adam).", "",
              "| | semu s/step | full s/step | semu / full |", "|---|---|---|---|",
              f"| before (every UNet weight trainable, as loaded) | {med['semu@nofreeze']:.4f} | {med['full@nofreeze']:.4f} | "
              f"{med['semu@nofreeze'] / med['full@nofreeze']:.2f} |",
              f"| after (UNet frozen, only the method's parameters train) | {med['semu']:.4f} | {med['full']:.4f} | "
              f"{med['semu'] / med['full']:.2f} |", ""]
        (out / f"{name}.md").write_text("\n".join(md))
        print("\n".join(md))
        return
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
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = a.name or f"cost-{a.arch}-{a.device.split(':')[0]}"
    atomic.write_json(out / f"{name}.json", report)
    before = out / f"{name}-before.json"
    md = markdown(report, json.loads(before.read_text()) if before.exists() else None)
    atomic.write_text(out / f"{name}.md", md)
    print(md)


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
