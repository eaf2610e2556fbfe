"""The erasure loop: forget set -> forget gradient -> method setup -> remap training -> delta.

Runs under accelerate (``mixed_precision`` no/fp16/bf16; trainable parameters stay fp32). All methods see the
same forget latents, timesteps, noise and base targets (precomputed before any weight changes, so no frozen
copy of the UNet is needed).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import objectives as O
from .distributed import several, sum_gradients


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class TrainConfig:
    steps: int = 120
    lr: float = 3e-3
    batch_size: int = 8
    grad_accum: int = 1
    forget_n: int = 32
    retain_weight: float = 0.0
    guidance_w: float = O.DEFAULT_GUIDANCE_W
    mixed_precision: str = "no"
    seed: int = 0
    objective: str = "remap"  # "remap" | "esd"
    esd_eta: float = 1.0
    curriculum: bool = False
    anchor_share: float = 0.0  # extra forget latents generated from the anchor prompts, as a share of forget_n
    remap_target: str = "base"  # "base": frozen base model's anchor prediction; "current": the trained model's, detached
    cufg: bool = False  # CUFG corrector: drop the forget gradient's component along a conflicting retain gradient
    esd_trajectory: bool = False  # ESD: x_t from the base model's DDIM sampling trajectory instead of noised latents
    trajectory_steps: int = 50  # DDIM steps of that trajectory (the official ESD code: 50)
    trajectory_guidance: float = 3.0  # its classifier-free guidance (the official ESD code: start_guidance 3)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ValueError("lr must be a positive number")
        if self.batch_size < 1 or self.grad_accum < 1 or self.forget_n < 1:
            raise ValueError("batch_size, grad_accum and forget_n must be >= 1")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError("mixed_precision must be one of no, fp16, bf16")
        if self.objective not in ("remap", "esd"):
            raise ValueError("objective must be 'remap' or 'esd'")
        if self.remap_target not in ("base", "current"):
            raise ValueError("remap_target must be 'base' or 'current'")
        if self.esd_trajectory and self.objective != "esd":
            raise ValueError("esd_trajectory applies to the ESD objective (esd-x, esd-u) only")
        if self.cufg and not self.retain_weight > 0:
            raise ValueError("cufg needs a retain term: set retain_weight > 0")
        if not 0 <= self.anchor_share <= 4:
            raise ValueError("anchor_share must be in [0, 4]: it is a share of forget_n (0 disables the anchor set)")


class Conditioner:
    """Text embeddings and extra UNet inputs for SD1.x/2.x and SDXL pipelines."""

    def __init__(self, pipe, device):
        self.pipe, self.device = pipe, device
        self.sdxl = getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"

    @torch.no_grad()
    def embed(self, prompts: list[str]) -> dict:
        if self.sdxl:
            pe, _, pooled, _ = self.pipe.encode_prompt(prompts, device=self.device, num_images_per_prompt=1,
                                                       do_classifier_free_guidance=False)
            res = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
            ids = torch.tensor([[res, res, 0, 0, res, res]], device=self.device, dtype=pe.dtype).repeat(len(prompts), 1)
            return {"hidden": pe, "text_embeds": pooled, "time_ids": ids}
        pe, _ = self.pipe.encode_prompt(prompts, device=self.device, num_images_per_prompt=1,
                                        do_classifier_free_guidance=False)
        return {"hidden": pe}


def cond_index(cond: dict, idx: torch.Tensor) -> dict:
    return {k: v[idx.to(v.device)] for k, v in cond.items()}


def cond_cat(a: dict, b: dict) -> dict:
    return {k: torch.cat([a[k], b[k]]) for k in a}


def unet_eps(unet, zt, t, cond: dict, dtype=None) -> torch.Tensor:
    kw = {}
    if "text_embeds" in cond:
        kw["added_cond_kwargs"] = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}
    h = cond["hidden"]
    if dtype is not None:
        zt, h = zt.to(dtype), h.to(dtype)
    return unet(zt, t, encoder_hidden_states=h, **kw).sample


@dataclass
class Schedule:
    """Per-step training samples: forget-latent indices, timesteps, noise and the base model's targets."""

    idx: torch.Tensor  # (steps*accum, B)
    t: torch.Tensor
    eps: torch.Tensor
    target: torch.Tensor | None  # None: computed during training from the current model (remap_target "current")
    retain_idx: torch.Tensor | None = None
    retain_t: torch.Tensor | None = None
    retain_eps: torch.Tensor | None = None
    retain_target: torch.Tensor | None = None  # base prediction eps_base(z_t^r | c_r): the retain term preserves it
    zt: torch.Tensor | None = None  # (steps*accum, B, ...) x_t taken from a sampling trajectory (ESD option)
    stats: dict = field(default_factory=dict)


def make_schedule(unet, latents, acp, forget_cond, anchor_cond, uncond, cfg: TrainConfig, device, n_micro: int,
                  retain_latents=None, retain_cond=None, progress=True, part: slice | None = None) -> Schedule:
    """``part``: keep only these samples of every micro-batch (this process's share under several processes);
    the samples, timesteps and noise are drawn for the whole batch first, so every share is that of one process."""
    g = torch.Generator("cpu").manual_seed(cfg.seed + 101)
    n, B = len(latents), cfg.batch_size
    idx = torch.stack([torch.randint(0, n, (B,), generator=g) for _ in range(n_micro)])
    T = len(acp)
    t = torch.randint(0, T, (n_micro, B), generator=g)
    eps = torch.randn((n_micro, B, *latents.shape[1:]), generator=g)
    if part is not None:
        idx, t, eps = (x[:, part].clone() for x in (idx, t, eps))
    targets, traj = [], []
    for i in tqdm(range(n_micro), desc="base targets", disable=not progress, dynamic_ncols=True, leave=False):
        if cfg.esd_trajectory:
            c = cond_index(forget_cond, idx[i] % len(forget_cond["hidden"]))
            zt, t[i] = trajectory_sample(unet, c, uncond, acp, eps[i].to(device), cfg.trajectory_steps,
                                         cfg.trajectory_guidance, g)
            traj.append(zt.float().cpu())
        else:
            z0 = latents[idx[i]].to(device)
            zt = O.add_noise(z0, eps[i].to(device), t[i].to(device), acp)
        with torch.no_grad():
            if cfg.objective == "esd":
                c = cond_index(forget_cond, idx[i] % len(forget_cond["hidden"]))
                u = {k: v.expand(len(idx[i]), *v.shape[1:]) for k, v in uncond.items()}
                e = unet_eps(unet, torch.cat([zt, zt]), t[i].to(device).repeat(2), cond_cat(c, u))
                ec, eu = e.chunk(2)
                targets.append(O.esd_target(eu, ec, cfg.esd_eta).float().cpu())
            elif cfg.remap_target == "base":
                a = cond_index(anchor_cond, idx[i] % len(anchor_cond["hidden"]))
                targets.append(unet_eps(unet, zt, t[i].to(device), a).float().cpu())
    s = Schedule(idx=idx, t=t, eps=eps, target=torch.stack(targets) if targets else None,
                 zt=torch.stack(traj) if traj else None)
    if retain_latents is not None and cfg.retain_weight > 0:
        s.retain_idx = torch.stack([torch.randint(0, len(retain_latents), (B,), generator=g) for _ in range(n_micro)])
        s.retain_t = torch.randint(0, T, (n_micro, B), generator=g)
        s.retain_eps = torch.randn((n_micro, B, *retain_latents.shape[1:]), generator=g)
        if part is not None:
            s.retain_idx, s.retain_t, s.retain_eps = (x[:, part].clone()
                                                      for x in (s.retain_idx, s.retain_t, s.retain_eps))
        rt = []
        for i in range(n_micro):
            zt = O.add_noise(retain_latents[s.retain_idx[i]].to(device), s.retain_eps[i].to(device), s.retain_t[i].to(device), acp)
            rc = cond_index(retain_cond, s.retain_idx[i] % len(retain_cond["hidden"]))
            with torch.no_grad():
                rt.append(unet_eps(unet, zt, s.retain_t[i].to(device), rc).float().cpu())
        s.retain_target = torch.stack(rt)
    return s


def noised_batches(latents, acp, cond: dict, uncond: dict, B: int, g: torch.Generator, device, desc: str,
                   progress: bool = True):
    """Batches of ``B`` latents in order, each noised at timesteps and noise drawn from ``g`` (t, then eps), with
    their prompts' conditioning (latent i -> prompt i mod len) and the empty prompt's: (z_t, t, eps, c, u)."""
    for i in tqdm(range(0, len(latents), B), desc=desc, disable=not progress, dynamic_ncols=True, leave=False):
        z0 = latents[i : i + B].to(device)
        b = len(z0)
        t = torch.randint(0, len(acp), (b,), generator=g).to(device)
        eps = torch.randn(z0.shape, generator=g).to(device)
        c = cond_index(cond, torch.arange(i, i + b) % len(cond["hidden"]))
        u = {k: v.expand(b, *v.shape[1:]) for k, v in uncond.items()}
        yield O.add_noise(z0, eps, t, acp), t, eps, c, u


def forget_gradient(unet, latents, acp, forget_cond, uncond, targets: list[str], cfg: TrainConfig, device,
                    autocast: Callable, progress=True, lean: bool = True) -> dict[str, torch.Tensor]:
    """One pass over the forget set: accumulate dL_g/dW for every target weight (fp32).

    ``lean`` (default): the guided loss's gradient is taken through the conditional and the unconditional pass one
    after the other (dL/de_c and dL/de_u from a no-grad pass, then two backward passes of batch B), so only one
    pass's activations are alive at a time instead of the 2B-batch graph; same gradient, one extra no-grad pass."""
    params = {n: unet.get_submodule(n).weight for n in targets}
    req = {n: p.requires_grad for n, p in unet.named_parameters()}
    unet.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    g = torch.Generator("cpu").manual_seed(cfg.seed + 202)
    n, B = len(latents), cfg.batch_size
    w = cfg.guidance_w
    try:
        for zt, t, eps, c, u in noised_batches(latents, acp, forget_cond, uncond, B, g, device, "forget gradient",
                                               progress):
            if not lean:
                with autocast():
                    e = unet_eps(unet, torch.cat([zt, zt]), torch.cat([t, t]), cond_cat(c, u))
                ec, eu = e.chunk(2)
                loss = O.forget_gradient_loss(ec, eu, eps, w, reduction="sum") / n
                loss.backward()
                continue
            with torch.no_grad(), autocast():
                ec, eu = unet_eps(unet, torch.cat([zt, zt]), torch.cat([t, t]), cond_cat(c, u)).float().chunk(2)
            # L = -sum((g - eps)^2) / n with g = (1+w) e_c - w e_u: dL/dg = -2 (g - eps) / n
            dg = -2.0 * ((1 + w) * ec - w * eu - eps.float()) / n
            del ec, eu
            for cond, coef in ((c, 1 + w), (u, -w)):
                with autocast():
                    e = unet_eps(unet, zt, t, cond)
                e.backward(gradient=(coef * dg).to(e.dtype))
                del e
        grads = {k: p.grad.detach().float() for k, p in params.items()}  # no copy: p.grad is released below
    finally:
        for k, p in unet.named_parameters():
            p.grad = None
            p.requires_grad_(req[k])
    return grads


def retain_input_pass(unet, latents, acp, cond, uncond, targets: list[str], cfg: TrainConfig, device,
                      autocast: Callable, make_acc: Callable, progress=True) -> dict:
    """One no-grad pass over the retain latents (noised at seeded timesteps, under their prompts and the empty
    prompt: the two passes of every guided sample) that feeds every target layer's inputs (a conv's unfolded
    patches, in the weight's flattened (in, kh, kw) order; rows of width d = in*kh*kw) to its accumulator
    ``make_acc(name, d)`` (anything with ``update(x)``). Returns the accumulators by layer name."""
    import torch.nn.functional as F

    mods = {n: unet.get_submodule(n) for n in targets}
    acc = {n: make_acc(n, m.weight[0].numel()) for n, m in mods.items()}

    def hook(name):
        def pre(mod, args):
            x = args[0].detach()
            if isinstance(mod, torch.nn.Conv2d):
                x = F.unfold(x, mod.kernel_size, mod.dilation, mod.padding, mod.stride).transpose(1, 2)
            acc[name].update(x.reshape(-1, x.shape[-1]))
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in mods.items()]
    g = torch.Generator("cpu").manual_seed(cfg.seed + 404)
    try:
        with torch.no_grad():
            for zt, t, _, c, u in noised_batches(latents, acp, cond, uncond, cfg.batch_size, g, device,
                                                 "retain activations", progress):
                with autocast():
                    unet_eps(unet, torch.cat([zt, zt]), torch.cat([t, t]), cond_cat(c, u))
    finally:
        for h in handles:
            h.remove()
    return acc


def retain_input_bases(unet, latents, acp, cond, uncond, targets: list[str], cfg: TrainConfig, device,
                       autocast: Callable, energy: float, estimator: str = "auto", sketch: int = 512,
                       progress=True, passes: int = 2) -> dict:
    """Per target layer, the input directions holding ``energy`` of what it sees on the retain set
    (:class:`~semu_diffusion.svd.RetainBasis`, with the energy actually captured).

    ``estimator``: "exact" (d x d moment), "sketch" (one-pass Nystrom sketch of ``sketch`` columns, 2 d l floats)
    or "auto" (exact where the moment is no larger than the sketch, d <= 2 l). Every layer's estimate is built in
    the same pass; with ``passes`` 2 the sketched layers see a second pass (one power iteration, see
    :meth:`~semu_diffusion.svd.InputMoment.power_pass`). The bases are then extracted one layer at a time, each
    estimate freed once it is used."""
    from .svd import InputMoment, sketch_matrix

    if estimator not in ("exact", "sketch", "auto"):
        raise ValueError("estimator must be exact, sketch or auto")
    omegas: dict[int, torch.Tensor] = {}  # one test matrix per width, shared by the layers of that width

    def make(name, d):
        mode = estimator if estimator != "auto" else ("exact" if d <= 2 * sketch else "sketch")
        if mode == "sketch" and min(sketch, d) not in omegas.setdefault(d, {}):
            omegas[d][min(sketch, d)] = sketch_matrix(d, min(sketch, d), cfg.seed, device)
        return InputMoment(d, mode, sketch, device=device, omega=omegas[d][min(sketch, d)] if mode == "sketch" else None)

    acc = sketch_passes(retain_input_pass(unet, latents, acp, cond, uncond, targets, cfg, device, autocast, make,
                                          progress), passes, unet, latents, acp, cond, uncond, cfg, device, autocast,
                        progress)
    out = {}
    for name in targets:
        out[name] = acc.pop(name).basis(energy)
    return out


def sketch_passes(acc: dict, passes: int, unet, latents, acp, cond, uncond, cfg: TrainConfig, device,
                  autocast: Callable, progress=True) -> dict:
    """Run the further passes (``passes`` - 1 power iterations) that the sketched accumulators of a finished
    :func:`retain_input_pass` take, over the same seeded inputs; exact moments are not fed again."""
    if passes not in (1, 2):
        raise ValueError("passes must be 1 or 2")
    sk = [n for n, a in acc.items() if getattr(a, "estimator", None) == "sketch"]
    for _ in range(passes - 1):
        if not sk:
            break
        for n in sk:
            acc[n].power_pass()
        retain_input_pass(unet, latents, acp, cond, uncond, sk, cfg, device, autocast, lambda n, d: acc[n], progress)
    return acc


def input_second_moments(unet, latents, acp, cond, uncond, targets: list[str], cfg: TrainConfig, device,
                         autocast: Callable, progress=True) -> dict[str, torch.Tensor]:
    """What each target layer sees on the retain set: the exact second moment K = sum x x^T of its inputs (see
    :func:`retain_input_pass`), returned as a factor S with S^T S = K."""
    from .svd import InputMoment

    acc = retain_input_pass(unet, latents, acp, cond, uncond, targets, cfg, device, autocast,
                            lambda n, d: InputMoment(d, "exact", device=device), progress)
    out = {}
    for name, a in acc.items():
        lam, Q = torch.linalg.eigh(a.K.double())
        out[name] = (lam.clamp_min(0).sqrt()[:, None] * Q.T).float()
    return out


def forget_loss_fn(unet, latents, acp, forget_cond, uncond, cfg: TrainConfig, device, batches: int = 4):
    """The forget loss L_g as a function of a batch index b (fresh graph each call; fixed seeded timesteps and noise
    per batch), over the first ``batches`` batches of the forget set. For curvature estimates (SAP's Hessian)."""
    B = min(len(latents), cfg.batch_size)
    n_batches = max(1, min(batches, -(-len(latents) // B)))
    g = torch.Generator("cpu").manual_seed(cfg.seed + 303)
    fixed = []
    for b in range(n_batches):
        idx = (torch.arange(B) + b * B) % len(latents)
        fixed.append((idx, torch.randint(0, len(acp), (B,), generator=g), torch.randn((B, *latents.shape[1:]), generator=g)))

    def loss_fn(b: int = 0) -> torch.Tensor:
        idx, t, eps = fixed[b % n_batches]
        t, eps = t.to(device), eps.to(device)
        zt = O.add_noise(latents[idx].to(device), eps, t, acp)
        c = cond_index(forget_cond, idx % len(forget_cond["hidden"]))
        u = {k: v.expand(B, *v.shape[1:]) for k, v in uncond.items()}
        e = unet_eps(unet, torch.cat([zt, zt]), torch.cat([t, t]), cond_cat(c, u))
        return O.forget_gradient_loss(*e.chunk(2), eps, cfg.guidance_w)

    loss_fn.batches = n_batches
    return loss_fn


@contextmanager
def frozen(module: torch.nn.Module):
    """Freeze every parameter of ``module`` for the block (a method then unfreezes only what it trains), so no
    weight gradient of a non-trained parameter is computed or kept. Afterwards each parameter gets back its own
    ``requires_grad`` (matched by identity, so wrapping and unwrapping modules inside the block is fine) and every
    gradient buffer is released."""
    saved = [(p, p.requires_grad) for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p in module.parameters():
            p.grad = None
        for p, r in saved:
            p.grad = None
            p.requires_grad_(r)


def cast_frozen(unet, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Cast frozen weights to the compute dtype (trainable ones stay fp32). Returns CPU copies of the originals."""
    saved = {}
    for n, p in unet.named_parameters():
        if not p.requires_grad and p.dtype != dtype:
            saved[n] = p.data.to("cpu", copy=True)
            p.data = p.data.to(dtype)
    return saved


def restore_frozen(unet, saved: dict[str, torch.Tensor]) -> None:
    """Put back the exact original weights saved by :func:`cast_frozen`."""
    params = dict(unet.named_parameters())
    for n, v in saved.items():
        params[n].data = v.to(params[n].device)


def curriculum_order(losses: torch.Tensor) -> torch.Tensor:
    """CUFG-style pacing: micro-steps sorted from easy (low initial loss) to hard."""
    return torch.argsort(losses)


def train(unet, params, schedule: Schedule, latents, forget_cond, cfg: TrainConfig, accelerator, device,
          retain_latents=None, retain_cond=None, acp=None, progress=True, anchor_cond=None,
          monitor: Callable[[int], bool] | None = None, monitor_every: int = 0, adversary=None) -> dict:
    """Adam on ``params`` with the remap (or ESD) loss on the precomputed schedule. Raises on nan/inf.

    ``monitor(step)`` (every ``monitor_every`` steps) returns True to stop early, e.g. once the concept is gone.
    ``adversary`` (``--robust``, :class:`~semu_diffusion.robust.EmbeddingAdversary`): adds its term
    ``adversary.loss(step, z_t, t, target)`` on each micro-step's forget samples.

    Under several processes the schedule holds this process's share of every micro-batch: its loss is weighted by
    that share of the batch, and accelerate sums the gradients and the loss of all processes before each step."""
    opt = torch.optim.Adam(params, lr=cfg.lr)
    opt = accelerator.prepare(opt)
    n_micro = schedule.idx.shape[0]
    dist = several(accelerator)
    if dist and (adversary is not None or cfg.cufg):
        raise ValueError("--robust and --cufg run in one process only")
    weight = schedule.idx.shape[1] / cfg.batch_size  # this process's share of each micro-batch (1 with one process)
    order = torch.arange(n_micro)

    def target(i: int) -> torch.Tensor:
        if schedule.target is not None:
            return schedule.target[i].to(device)
        if anchor_cond is None:
            raise ValueError("remap_target 'current' needs the anchor embeddings")
        with torch.no_grad():  # the current model's prediction for the anchor class, detached (official SEMU code)
            return _pred(unet, schedule, i, latents, anchor_cond, acp, device, accelerator).float()

    if cfg.curriculum:
        with torch.no_grad():
            init = torch.stack([O.remap_loss(_pred(unet, schedule, i, latents, forget_cond, acp, device, accelerator).float(),
                                             target(i)) for i in range(n_micro)])
        if dist:
            init = accelerator.reduce(init * weight, reduction="sum")
        order = curriculum_order(init.cpu())
    losses, conflicts = [], 0
    bar = tqdm(range(cfg.steps), desc="unlearn", disable=not progress, dynamic_ncols=True)
    t0 = time.time()
    k = 0
    for step in bar:
        opt.zero_grad(set_to_none=True)
        tot = 0.0
        for _ in range(cfg.grad_accum):
            i = int(order[k])
            k += 1
            pred = _pred(unet, schedule, i, latents, forget_cond, acp, device, accelerator)
            tgt = target(i)
            loss = O.remap_loss(pred, tgt) / cfg.grad_accum
            if dist:
                loss = loss * weight
            if adversary is not None:
                loss = loss + adversary.loss(step, _zt(schedule, i, latents, acp, device), schedule.t[i].to(device),
                                             tgt) / cfg.grad_accum
            rloss = None
            if schedule.retain_idx is not None and retain_latents is not None:
                z0 = retain_latents[schedule.retain_idx[i]].to(device)
                eps = schedule.retain_eps[i].to(device)
                tt = schedule.retain_t[i].to(device)
                zt = O.add_noise(z0, eps, tt, acp)
                rc = cond_index(retain_cond, schedule.retain_idx[i] % len(retain_cond["hidden"]))
                with accelerator.autocast():
                    rp = unet_eps(unet, zt, tt, rc)
                rloss = cfg.retain_weight * O.remap_loss(rp, schedule.retain_target[i].to(device)) / cfg.grad_accum
                if dist:
                    rloss = rloss * weight
            total = loss if rloss is None else loss + rloss
            if not dist and not torch.isfinite(total):  # several processes: checked on the summed loss below
                raise TrainingDiverged(f"loss became {total.item()} at step {step}: lower --lr or use --mixed-precision no; "
                                       "no delta was written")
            if cfg.cufg and rloss is not None:
                conflicts += cufg_backward(loss, rloss, params, accelerator)
            else:
                accelerator.backward(total)
            tot += total.item()
        if dist:
            tot = sum_gradients(accelerator, params, tot)
            if not math.isfinite(tot):
                raise TrainingDiverged(f"loss became {tot} at step {step}: lower --lr or use --mixed-precision no; "
                                       "no delta was written")
        opt.step()
        for p in params:
            if not torch.isfinite(p).all():
                raise TrainingDiverged(f"trainable weights became nan/inf at step {step}: lower --lr; no delta was written")
        losses.append(tot)
        bar.set_postfix(loss=f"{tot:.4f}")
        if monitor is not None and monitor_every and (step + 1) % monitor_every == 0 and step + 1 < cfg.steps:
            if _main_decides(accelerator, lambda: monitor(step + 1)) if dist else monitor(step + 1):
                break
    return {"losses": losses, "train_seconds": time.time() - t0, "step_seconds": (time.time() - t0) / len(losses),
            "steps_run": len(losses), "cufg_conflicts": conflicts if cfg.cufg else None}


def _main_decides(accelerator, decide: Callable[[], bool]) -> bool:
    """``decide()`` on the main process, its answer on every process."""
    from accelerate.utils import broadcast_object_list

    return bool(broadcast_object_list([decide() if accelerator.is_main_process else None])[0])


def cufg_correct(gf: list[torch.Tensor], gr: list[torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
    """CUFG gradient corrector: if the forget gradient conflicts with the retain gradient (cosine < 0 over all
    trained parameters), remove its component along the retain gradient, g_f - (<g_f,g_r>/||g_r||^2) g_r;
    otherwise leave it. Returns the corrected forget gradient and whether they conflicted."""
    dot = sum((a.double() * b.double()).sum() for a, b in zip(gf, gr))
    nr = sum((b.double() ** 2).sum() for b in gr)
    if dot >= 0 or nr == 0:
        return gf, False
    c = dot / nr
    return [a - (c * b.double()).to(a.dtype) for a, b in zip(gf, gr)], True


def cufg_backward(forget_loss, retain_loss, params, accelerator) -> int:
    """Accumulate the CUFG-corrected forget gradient plus the retain gradient into ``p.grad``. Returns 1 on conflict."""
    scale = accelerator.scaler.get_scale() if getattr(accelerator, "scaler", None) is not None else 1.0
    gf = torch.autograd.grad(forget_loss * scale, params, allow_unused=True)
    gr = torch.autograd.grad(retain_loss * scale, params, allow_unused=True)
    gf = [torch.zeros_like(p) if g is None else g for g, p in zip(gf, params)]
    gr = [torch.zeros_like(p) if g is None else g for g, p in zip(gr, params)]
    gf, conflict = cufg_correct(gf, gr)
    for p, a, b in zip(params, gf, gr):
        g = (a + b).to(p.dtype)
        p.grad = g if p.grad is None else p.grad + g
    return int(conflict)


@torch.no_grad()
def trajectory_sample(unet, cond: dict, uncond: dict, acp, noise, steps: int, guidance: float, g: torch.Generator):
    """x_t on the base model's deterministic DDIM trajectory from ``noise`` under ``cond`` (guided), stopped after a
    uniformly drawn number of the ``steps`` steps (as the official ESD code takes x_t). Returns (x_t, t)."""
    T = len(acp)
    ts = torch.linspace(T - 1, 0, steps).round().long()
    stop = int(torch.randint(0, steps, (1,), generator=g))
    B = noise.shape[0]
    u = {k: v.expand(B, *v.shape[1:]) for k, v in uncond.items()}
    z = noise
    for k in range(stop):
        tk = ts[k].to(noise.device).repeat(B)
        ec, eu = unet_eps(unet, torch.cat([z, z]), torch.cat([tk, tk]), cond_cat(cond, u)).float().chunk(2)
        e = eu + guidance * (ec - eu)
        a, a_next = acp[ts[k]].float(), acp[ts[k + 1]].float()
        x0 = (z - (1 - a).sqrt() * e) / a.sqrt()
        z = a_next.sqrt() * x0 + (1 - a_next).sqrt() * e
    return z, ts[stop].repeat(B)


def _zt(schedule: Schedule, i: int, latents, acp, device) -> torch.Tensor:
    """Micro-step i's noised forget samples (from the sampling trajectory where the schedule has one)."""
    if schedule.zt is not None:
        return schedule.zt[i].to(device)
    z0 = latents[schedule.idx[i]].to(device)
    return O.add_noise(z0, schedule.eps[i].to(device), schedule.t[i].to(device), acp)


def _pred(unet, schedule: Schedule, i: int, latents, forget_cond, acp, device, accelerator):
    zt = _zt(schedule, i, latents, acp, device)
    c = cond_index(forget_cond, schedule.idx[i] % len(forget_cond["hidden"]))
    with accelerator.autocast():
        return unet_eps(unet, zt, schedule.t[i].to(device), c)
