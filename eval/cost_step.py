"""eval/cost.py: training-step time of each method (alternating repeats), the SVD stage, and the freeze fix
(--freeze-only)."""
from __future__ import annotations

import os
import platform
import statistics
import time

import torch

from cost_common import sync, target_names, write_report


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


def freeze_only(a, pipe, res: int) -> None:
    """--freeze-only: the training step of semu and full with and without the freeze fix, alternating in one run."""
    ms = ["semu@nofreeze", "full@nofreeze", "semu", "full"]
    t = step_times(pipe, ms, a.device, a.mixed_precision, res, a.repeats, a.iters, targets=a.targets)
    med = t["median_step_seconds"]
    rep = {"arch": a.arch, "device": a.device, "resolution": res, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "train_step": t, "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
    md = [f"# Freeze fix, one run: {a.arch} on {a.device}, {res} px, batch 1, OMP_NUM_THREADS={rep['omp_num_threads']}",
          "", f"Median of {a.repeats} alternating repeats x {a.iters} steps (forward + backward + Adam).", "",
          "| | semu s/step | full s/step | semu / full |", "|---|---|---|---|",
          f"| before (every UNet weight trainable, as loaded) | {med['semu@nofreeze']:.4f} | {med['full@nofreeze']:.4f} | "
          f"{med['semu@nofreeze'] / med['full@nofreeze']:.2f} |",
          f"| after (UNet frozen, only the method's parameters train) | {med['semu']:.4f} | {med['full']:.4f} | "
          f"{med['semu'] / med['full']:.2f} |", ""]
    write_report(a.out_dir, a.name or f"cost-{a.arch}-{a.device.split(':')[0]}-freeze", rep, "\n".join(md))
