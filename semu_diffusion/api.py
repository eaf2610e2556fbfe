"""Public entry point: ``erase(concept, ...)`` -> writes a delta file and returns its summary."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .concepts import plan_concept, warn_unseen_concept
from .delta import fingerprint, save_delta
from .generation import generate
from .loading import load_pipeline
from .methods import MethodConfig, get_method
from .recipes import recipe_for, select_targets
from .trainer import Conditioner, TrainConfig, cast_frozen, forget_gradient, forget_loss_fn, frozen, make_schedule, restore_frozen, train


@dataclass
class EraseResult:
    out: Path | None
    stats: dict
    delta: object = None
    provenance: dict = field(default_factory=dict)


def _pick(v, recipe_section: dict, key: str, default):
    if v is not None:
        return v
    return recipe_section.get(key, default)


@torch.no_grad()
def encode_images(pipe, folder: str | Path, resolution: int, device: str) -> torch.Tensor:
    """User forget images (png/jpg in a folder) -> scaled VAE latents (mean of the posterior)."""
    import numpy as np
    from PIL import Image

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not files:
        raise ValueError(f"no .png/.jpg images in {folder}: pass a folder of images of the concept")
    x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((resolution, resolution), Image.BICUBIC)) for f in files])
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device, pipe.vae.dtype)
    lat = torch.cat([pipe.vae.encode(t[i : i + 16]).latent_dist.mean for i in range(0, len(t), 16)])
    return (lat * pipe.vae.config.scaling_factor).float().cpu()


def retain_prompt_list(plan, recipe, retain_prompts) -> list[str]:
    """Prompts whose base predictions the retain term preserves: a file or list, else the recipe's
    retain_concepts (other than the erased one) in the concept templates, else the anchor prompts."""
    if isinstance(retain_prompts, (list, tuple)):
        out = [p for p in retain_prompts if p.strip()]
    elif retain_prompts:
        p = Path(retain_prompts)
        if not p.exists():
            raise FileNotFoundError(f"retain prompt file {p} not found")
        out = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    else:
        from .concepts import OBJECT_TEMPLATES, _fix_article

        others = [c for c in recipe.train.get("retain_concepts", []) if c.lower() != plan.concept.lower()]
        out = [_fix_article(t.format(c)) for c in others for t in OBJECT_TEMPLATES[:2]] if plan.kind == "object" else []
        out = out or list(plan.anchor_prompts)
    if not out:
        raise ValueError("the retain prompt set is empty: pass retain prompts or set --retain-weight 0")
    return out


def erase(concept: str, model: str = "toy", anchor: str | None = None, method: str = "semu", out: str | Path | None = None,
          steps: int | None = None, lr: float | None = None, tau: float | None = None, r_max: int | None = None,
          r_min: int | None = None, project: bool | None = None, conv_mode: str = "flat", batch_size: int | None = None,
          grad_accum: int = 1, forget_n: int | None = None, forget_prompts: str | None = None, kind: str | None = None,
          retain_weight: float | None = None, retain_prompts: str | list[str] | None = None,
          mixed_precision: str = "no", device: str | None = None, seed: int = 0,
          preset: str | None = None, targets: str | None = None, resolution: int | None = None,
          curriculum: bool = False, method_options: dict | None = None, gen_steps: int | None = None,
          forget_images: str | Path | None = None, anchor_share: float | None = None, pipe=None,
          progress: bool = True,
          log=print) -> EraseResult:
    """Erase ``concept`` from ``model`` with ``method`` and write the delta to ``out`` (if given).

    Defaults come from the model family's recipe in pipelines/<family>.toml. The base model is never modified
    on disk; the in-memory UNet is restored to its base weights before returning.
    """
    from accelerate import Accelerator

    t_all = time.time()
    method_cls = get_method(method)  # fail on an unknown method before loading anything
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    stage: dict[str, float] = {}
    t0 = time.time()
    if pipe is None:
        pipe = load_pipeline(model, device=device)
        model_id = pipe.semu_model_id
    else:
        model_id = getattr(pipe, "semu_model_id", None) or getattr(pipe, "name_or_path", None) or "user-pipeline"
    stage["load"] = time.time() - t0
    unet = pipe.unet
    recipe = recipe_for(unet.config, preset)
    S, G = recipe.semu, recipe.generate
    T = dict(recipe.train)
    mdef = dict(recipe.methods.get(method, {}))
    T.update({k: mdef.pop(k) for k in list(mdef) if k in ("steps", "lr", "batch_size", "forget_n", "retain_weight", "anchor_share")})
    method_options = {**mdef, **(method_options or {})}
    plan = plan_concept(concept, anchor=anchor, kind=kind, prompts_file=forget_prompts,
                        default_object_anchors=recipe.train.get("object_anchors"))
    if model_id == "toy":
        from .toy import world

        known = set(world.SHAPE_NAMES) | set(world.SYNONYMS) | set(world.COLOR_NAMES)
        warn_unseen_concept(plan.concept, known)
    include = [targets] if targets else recipe.include
    names = select_targets(unet, include, [] if targets else recipe.exclude)
    if not names:
        raise ValueError(f"no UNet module matches the targets {include}: check --targets")
    mcfg = MethodConfig(tau=_pick(tau, S, "tau", 0.95), r_min=_pick(r_min, S, "r_min", 1), r_max=_pick(r_max, S, "r_max", None),
                        project=_pick(project, S, "project", True), conv_mode=conv_mode)
    tcfg = TrainConfig(steps=_pick(steps, T, "steps", 200), lr=_pick(lr, T, "lr", 1e-4), batch_size=_pick(batch_size, T, "batch_size", 1),
                       grad_accum=grad_accum, forget_n=_pick(forget_n, T, "forget_n", 16),
                       retain_weight=_pick(retain_weight, T, "retain_weight", 0.0), mixed_precision=mixed_precision,
                       seed=seed, curriculum=curriculum, anchor_share=_pick(anchor_share, T, "anchor_share", 0.0))
    m = method_cls(mcfg, **method_options)
    if m.objective == "esd":
        tcfg.objective = "esd"
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state:  # a previous erase() in this process may have used another precision
        AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=(device == "cpu"),
                              gradient_accumulation_steps=1)
    log(f"semu-erase: concept={plan.concept!r} kind={plan.kind} anchor={plan.anchor!r} method={method} "
        f"model={model_id} family={recipe.family} targets={len(names)} device={device} precision={mixed_precision}")
    torch.manual_seed(seed)
    cond = Conditioner(pipe, device)
    forget_cond = cond.embed(plan.forget_prompts)
    anchor_cond = cond.embed(plan.anchor_prompts)
    uncond = cond.embed([""])
    acp = pipe.scheduler.alphas_cumprod.to(device)
    res = resolution or G.get("resolution")

    def own_latents(prompts: list[str], seed_offset: int, desc: str) -> torch.Tensor:
        """Latents the base model generates for ``prompts`` (image i from seed seed*100003 + seed_offset + i)."""
        with accelerator.autocast():
            return generate(pipe, prompts, [seed * 100003 + seed_offset + i for i in range(len(prompts))],
                            steps=gen_steps or G.get("steps", 25), guidance_scale=G.get("guidance_scale", 7.5),
                            output_type="latent", progress=progress, desc=desc, height=res)

    # 1. data-free forget set: latents generated by the model itself
    t0 = time.time()
    n = tcfg.forget_n
    if forget_images:
        latents = encode_images(pipe, forget_images, res or pipe.unet.config.sample_size * pipe.vae_scale_factor, device)
        n = tcfg.forget_n = len(latents)
    else:
        latents = own_latents([plan.forget_prompts[i % len(plan.forget_prompts)] for i in range(n)], 0, "forget set")
    # anchor latents conditioned on the forget prompts (Concept-Ablation style): the remap then also holds where the
    # erased model's sampling trajectory actually goes, not only around images of the concept
    train_latents = latents
    n_anchor = int(round(tcfg.anchor_share * n)) if tcfg.objective == "remap" else 0  # ESD has no anchor
    if n_anchor:
        extra = own_latents([plan.anchor_prompts[i % len(plan.anchor_prompts)] for i in range(n_anchor)], 13, "anchor set")
        train_latents = torch.cat([latents, extra.to(latents)])
    retain_latents = retain_cond = None
    if tcfg.retain_weight > 0:
        rset = retain_prompt_list(plan, recipe, retain_prompts)
        retain_latents = own_latents([rset[i % len(rset)] for i in range(n)], 7, "retain set")
        retain_cond = cond.embed(rset)
    stage["forget_set"] = time.time() - t0

    # 2. base targets for every training micro-step (before any weight changes)
    t0 = time.time()
    n_micro = tcfg.steps * tcfg.grad_accum
    with accelerator.autocast():
        sched = make_schedule(unet, train_latents, acp, forget_cond, anchor_cond, uncond, tcfg, device, n_micro,
                              retain_latents=retain_latents, retain_cond=retain_cond, progress=progress)
    stage["targets"] = time.time() - t0

    # 3. forget gradient over the target weights
    t0 = time.time()
    grads = forget_gradient(unet, latents, acp, forget_cond, uncond, m.gradient_targets(unet, names), tcfg, device,
                            accelerator.autocast, progress=progress) if m.needs_gradient else None
    stage["gradient"] = time.time() - t0

    # 4. method setup (SVD + reparametrisation for SEMU)
    t0 = time.time()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    unet_params = sum(p.numel() for p in unet.parameters())
    with frozen(unet):  # only the method's own parameters get gradients; the caller's requires_grad comes back
        loss_fn = forget_loss_fn(unet, latents, acp, forget_cond, uncond, tcfg, device) if m.needs_loss_fn else None
        params = m.setup(unet, names, grads, loss_fn=loss_fn)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stage["setup"] = time.time() - t0
        del grads
        compute_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision)
        saved = {}
        try:
            if compute_dtype is not None:
                saved = cast_frozen(unet, compute_dtype)
            # 5. unlearn
            t0 = time.time()
            tr = train(unet, params, sched, train_latents, forget_cond, tcfg, accelerator, device, retain_latents=retain_latents,
                       retain_cond=retain_cond, acp=acp, progress=progress)
            stage["train"] = time.time() - t0
            # 6. export
            t0 = time.time()
            delta = m.export(unet)
            stage["export"] = time.time() - t0
        finally:
            restore_frozen(unet, saved)  # names are those of the wrapped UNet: restore before unwrapping
            m.restore(unet)
    base_fp = fingerprint(unet, delta.modules())  # the base weights are restored exactly at this point
    trainable = m.trainable_numel()
    prov = {
        "toolkit": "semu-diffusion", "toolkit_version": __version__, "method": method, "concepts": [plan.concept],
        "kind": plan.kind, "anchor": plan.anchor, "base_model": model_id, "base_family": recipe.family,
        "base_fingerprint": base_fp, "tau": mcfg.tau, "r_min": mcfg.r_min, "r_max": mcfg.r_max,
        "project": mcfg.project, "conv_mode": mcfg.conv_mode, "ranks": delta.ranks, "steps": tcfg.steps, "lr": tcfg.lr,
        "batch_size": tcfg.batch_size, "forget_n": tcfg.forget_n, "anchor_share": tcfg.anchor_share if n_anchor else 0.0, "seed": seed, "mixed_precision": mixed_precision,
        "forget_prompts": plan.forget_prompts, "retain_weight": tcfg.retain_weight, "forget_images": str(forget_images) if forget_images else None, "anchor_prompts": plan.anchor_prompts, "curriculum": curriculum,
        "method_info": {k: v for k, v in m.info.items() if k not in ("ranks", "energy")}, "method_options": method_options,
    }
    t0 = time.time()
    path = save_delta(out, delta, prov) if out else None
    stage["export"] += time.time() - t0
    stats = {
        "concept": plan.concept, "anchor": plan.anchor, "method": method, "layers": len(names),
        "trainable_params": trainable, "unet_params": unet_params, "trainable_frac": trainable / unet_params,
        "rank_min": min(delta.ranks.values()) if delta.ranks else None,
        "rank_max": max(delta.ranks.values()) if delta.ranks else None,
        "rank_mean": (sum(delta.ranks.values()) / len(delta.ranks)) if delta.ranks else None,
        "delta_bytes": path.stat().st_size if path else None, "final_loss": tr["losses"][-1],
        "first_loss": tr["losses"][0], "step_seconds": tr["step_seconds"],
        "forget_latents": len(latents), "anchor_latents": n_anchor,
        "stage_seconds": {k: round(v, 3) for k, v in stage.items()}, "seconds": time.time() - t_all,
        "device": device, "mixed_precision": mixed_precision, "out": str(path) if path else None,
    }
    if device.startswith("cuda"):
        stats["cuda_max_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return EraseResult(out=path, stats=stats, delta=delta, provenance=prov)
