"""eval/cost.py: where the training step's time goes (--profile: torch.profiler) and the FLOP shares of the target
sets (--flops: torch.utils.flop_counter)."""
from __future__ import annotations

import os
import statistics
import time

import torch

from cost_common import TARGET_SETS, sync, target_info, target_names, write_report
from cost_step import step_inputs


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


def flops_report(a, pipe, res: int) -> None:
    """--flops: the FLOP shares of the recipe's target set, conv-attn and --targets -> <name>.{json,md}."""
    sets = {"recipe": None, "conv-attn": TARGET_SETS["conv-attn"]}
    if a.targets and a.targets not in sets.values():
        sets["--targets"] = a.targets
    rep = {"arch": a.arch, "device": a.device, **flop_analysis(pipe, res, sets, a.device),
           "torch": torch.__version__}
    write_report(a.out_dir, a.name or "cost-flops", rep, flops_markdown(rep, a.arch))


def profile_report(a, pipe, res: int) -> None:
    """--profile: floor vs semu vs full steps and a torch.profiler op table of each -> <name>.{json,md}."""
    rep = {"arch": a.arch, "device": a.device, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           **profile_step(pipe, res, a.targets, a.device, a.repeats), "torch": torch.__version__}
    write_report(a.out_dir, a.name or f"cost-{a.arch}-{a.device.split(':')[0]}-profile", rep, profile_markdown(rep))
