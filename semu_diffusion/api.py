"""Public entry point: ``erase(concept, ...)`` -> writes a delta file and returns its summary.

An erasure is six named stages over one :class:`EraseRun`: :func:`make_forget_set` -> :func:`make_base_targets`
-> :func:`compute_forget_gradient` -> :func:`setup_method` -> :func:`train_method` -> :func:`export_delta`.
Options are one :class:`~semu_diffusion.config.EraseConfig`.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .concepts import (given_retain_prompts, next_class, norm_name, plan_concept, read_prompt_lines, split_words,
                       warn_unseen_concept)
from .config import ConfigError, EraseConfig, PAPER_PRESETS, config_from_kwargs, image_files, resolve, warn_large_work
from .delta import fingerprint, save_delta
from .distributed import gather_list, is_main, launched, several, share, sync_from_main
from .generation import DEFAULT_BATCH, generate
from .loading import load_pipeline
from .methods import MethodConfig, get_method
from .recipes import recipe_for, select_targets
from .trainer import (Conditioner, TrainingDiverged, TrainConfig, cast_frozen, forget_gradient, forget_loss_fn, frozen,
                      make_schedule, retain_input_bases, restore_frozen, train)


MAX_ACTIVATION_DIM = 4096  # inputs per layer (conv: in x kh x kw) for --retain-estimator exact's d x d moment


def check_activation_estimator(cfg: EraseConfig, unet, names: list[str]) -> None:
    """--retain-estimator exact keeps a d x d input moment per layer: refuse layers wider than MAX_ACTIVATION_DIM
    (auto and sketch handle any width in O(d x l) memory)."""
    if cfg.retain_estimator != "exact":
        return
    big = max(names, key=lambda n: unet.get_submodule(n).weight[0].numel())
    d = unet.get_submodule(big).weight[0].numel()
    if d > MAX_ACTIVATION_DIM:
        raise ConfigError(f"--retain-estimator exact keeps a {d} x {d} input second moment for {big} "
                          f"({d * d * 4 / 2**30:.1f} GB); the limit is {MAX_ACTIVATION_DIM} inputs per layer: use "
                          "--retain-estimator auto (or sketch), --retain-source gradient, or --targets without that layer")


@dataclass
class EraseResult:
    out: Path | None
    stats: dict
    delta: object = None
    provenance: dict = field(default_factory=dict)


@dataclass
class EraseRun:
    """The state one erasure carries from stage to stage."""

    cfg: EraseConfig
    pipe: object
    model_id: str
    recipe: object
    plan: object
    names: list[str]
    method: object
    mcfg: MethodConfig
    tcfg: TrainConfig
    accelerator: object
    device: str
    cond: dict = field(default_factory=dict)  # forget / anchor / uncond embeddings
    acp: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    train_latents: torch.Tensor | None = None
    n_anchor: int = 0
    retain_latents: torch.Tensor | None = None
    retain_cond: dict | None = None
    retain_grads: dict | None = None
    schedule: object = None
    grads: dict | None = None
    params: list | None = None
    train_result: dict | None = None
    stage: dict = field(default_factory=dict)
    retain_seconds: dict = field(default_factory=dict)  # inside the stages: retain latents, retain activation pass
    progress: bool = True
    stop_judge: object = None  # the --stop-every judge, built before the model loaded
    anchor_rule: dict | None = None  # how the anchor was chosen when no --anchor was given (--robust), for provenance

    @property
    def unet(self):
        return self.pipe.unet


@torch.no_grad()
def encode_images(pipe, folder: str | Path, resolution: int, device: str) -> torch.Tensor:
    """User forget images (png/jpg/webp in a folder) -> scaled VAE latents (mean of the posterior)."""
    import numpy as np
    from PIL import Image

    files = image_files(folder)
    x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((resolution, resolution), Image.BICUBIC)) for f in files])
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device, pipe.vae.dtype)
    lat = torch.cat([pipe.vae.encode(t[i : i + 16]).latent_dist.mean for i in range(0, len(t), 16)])
    return (lat * pipe.vae.config.scaling_factor).float().cpu()


def retain_prompt_list(plan, recipe, retain_prompts) -> list[str]:
    """Prompts whose base predictions the retain term preserves (and whose gradient SEMU's retain-aware subspace
    avoids): a file or list, else the recipe's retain_concepts other than the erased one(s) in the recipe's
    retain_templates, else the anchor prompts. ``plan``: one ConceptPlan or a list (joint erasure)."""
    plans = list(plan) if isinstance(plan, (list, tuple)) else [plan]
    out = given_retain_prompts(retain_prompts)
    if out is None:
        from .concepts import OBJECT_TEMPLATES, _fix_article

        erased = {norm_name(p.concept) for p in plans}
        others = [c for c in recipe.train.get("retain_concepts", []) if norm_name(c) not in erased]
        templates = recipe.train.get("retain_templates", OBJECT_TEMPLATES[:2])
        # template-major, so the first len(others) retain latents already cover every kept class
        out = ([_fix_article(t.format(c)) for t in templates for c in others]
               if all(p.kind == "object" for p in plans) else [])
        out = out or recipe_retain_prompts(recipe, plans)
        out = out or list(dict.fromkeys(a for p in plans for a in p.anchor_prompts))
    if not out:
        raise ValueError("the retain prompt set is empty: pass retain prompts or set --retain-weight 0")
    return out


def robust_anchor(pipe, device, recipe, concept: str, kind: str | None) -> tuple[str | None, dict | None]:
    """``--robust`` on an object concept without ``--anchor``: of the recipe's default object anchors, the one whose
    text conditioning ("a photo of a <anchor>", every position) lies farthest from the concept's. A near anchor
    (ring -> circle) leaves the erased model one small conditioning change away from the concept, which is what
    the attacks find. Returns (anchor, the rule and distances for the provenance); (None, None) leaves the default."""
    from .concepts import OBJECT_TEMPLATES, article, concept_kind, object_anchor_candidates

    if (kind or concept_kind(concept)) != "object":
        return None, None
    cands = object_anchor_candidates(concept, recipe.train.get("object_anchors"))
    if len(cands) < 2:
        return None, None
    h = Conditioner(pipe, device).embed([article(OBJECT_TEMPLATES[0].format(x)) for x in [concept.strip(), *cands]])
    h = h["hidden"].float().flatten(1)
    dist = {a: float((h[0] - h[i + 1]).norm()) for i, a in enumerate(cands)}
    best = max(cands, key=dist.get)
    return best, {"rule": "robust: the recipe's object anchor farthest from the concept in text conditioning (L2, "
                          "'a photo of a <x>')", "distances": dist, "chosen": best}


def concept_plan(cfg: EraseConfig, recipe, concept: str, anchor: str | None, kind: str | None):
    """One concept's forget and paired anchor prompts under a resolved config and its recipe: the forget prompt file
    (``--forget-prompts``, else the recipe's for the kind), the recipe's default object anchors and the forget
    modifiers (and the bare word)."""
    return plan_concept(concept, anchor=anchor, kind=kind,
                        prompts_file=cfg.forget_prompts or recipe_forget_prompts(recipe, concept, kind),
                        default_object_anchors=recipe.train.get("object_anchors"),
                        modifiers=split_words(cfg.forget_modifiers), bare=cfg.forget_bare)


def recipe_forget_prompts(recipe, concept: str, kind: str | None = None) -> Path | None:
    """The recipe's forget prompt file for this concept's kind (``train.forget_prompt_files``), or None."""
    from .concepts import concept_kind

    name = (recipe.train.get("forget_prompt_files") or {}).get(kind or concept_kind(concept))
    if not name:
        return None
    f = Path(recipe.path).resolve().parent.parent / "prompts" / name if getattr(recipe, "path", None) else Path(name)
    if not f.is_file():
        raise FileNotFoundError(f"recipe {recipe.family}: forget prompt file {f} not found")
    return f


def recipe_retain_prompts(recipe, plans) -> list[str]:
    """The recipe's shipped retain prompt files (``train.retain_prompt_files``: concept kind -> files in prompts/,
    ``default`` for any kind without its own), each file's lines in a fixed shuffled order and the files
    interleaved, so that the first retain latents already cover every file and category; prompts naming an erased
    concept are left out."""
    import random

    files = recipe.train.get("retain_prompt_files") or {}
    kinds = [p.kind for p in plans]
    chosen = next((files[k] for k in kinds if k in files), files.get("default"))
    if not chosen:
        return []
    root = Path(recipe.path).resolve().parent.parent / "prompts" if getattr(recipe, "path", None) else None
    lists = []
    for name in ([chosen] if isinstance(chosen, str) else chosen):
        f = (root / name) if root is not None else Path(name)
        if not f.is_file():
            raise FileNotFoundError(f"recipe {recipe.family}: retain prompt file {f} not found")
        lines = read_prompt_lines(f, encoding="utf-8")
        random.Random(0).shuffle(lines)
        lists.append(lines)
    erased = [norm_name(p.concept) for p in plans]
    erased += [re.sub(r"^(in the )?style of |\s*style$", "", e) for p, e in zip(plans, erased) if p.kind == "style"]
    out = [x for row in zip(*[lst + [None] * (max(map(len, lists)) - len(lst)) for lst in lists]) for x in row
           if x is not None and not any(e and e in norm_name(x) for e in erased)]
    return list(dict.fromkeys(out))


# ---- stage 0: model, recipe, options, plan ----------------------------------------------------------------------
def prepare(cfg: EraseConfig, pipe=None, progress: bool = True, log=print) -> EraseRun:
    """Load the model (unless given), resolve every option against its recipe, plan the concept, pick targets."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    t0 = time.time()
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if launched():
        check_several_processes(cfg)
        if device == "cuda":  # one GPU per process
            from accelerate import PartialState

            device = str(PartialState().device)
        if not is_main():
            progress, log = False, (lambda *a, **k: None)
    stop_judge = build_stop_judge(cfg, device)
    if pipe is None:
        pipe = load_pipeline(cfg.model, device=device)
        model_id = pipe.semu_model_id
    else:
        model_id = getattr(pipe, "semu_model_id", None) or getattr(pipe, "name_or_path", None) or "user-pipeline"
        if pipe.unet.dtype != torch.float32:
            raise ConfigError(f"the pipeline's UNet is in {pipe.unet.dtype}: erase() keeps the base weights in float32; "
                              "load it with torch_dtype=torch.float32 and pass mixed_precision='bf16' (or 'fp16' on CUDA)")
    load_s = time.time() - t0
    unet = pipe.unet
    recipe = recipe_for(unet.config, cfg.recipe)
    cfg = resolve(cfg, recipe)
    warn_large_work(cfg)
    anchor, anchor_rule = cfg.anchor, None
    if anchor is None and cfg.preset == "semu-paper":
        anchor = next_class(cfg.concept, recipe.train.get("retain_concepts", []))
    elif anchor is None and cfg.robust:
        anchor, anchor_rule = robust_anchor(pipe, device, recipe, cfg.concept, cfg.kind)
    plan = concept_plan(cfg, recipe, cfg.concept, anchor, cfg.kind)
    if model_id == "toy":
        from .toy import world

        warn_unseen_concept(plan.concept, world.known_words())
    include = [cfg.targets] if cfg.targets else recipe.include
    names = select_targets(unet, include, [] if cfg.targets else recipe.exclude)
    if not names:
        raise ConfigError(f"no UNet module matches the targets {include}: check --targets")
    if cfg.retain_source == "activation" and cfg.retain_energy and cfg.method == "semu":
        check_activation_estimator(cfg, unet, names)
    mcfg = MethodConfig(tau=cfg.tau, r_min=cfg.r_min, r_max=cfg.r_max, project=cfg.project, conv_mode=cfg.conv_mode,
                        retain_energy=cfg.retain_energy, retain_side=cfg.retain_side)
    m = get_method(cfg.method)(mcfg, **cfg.method_options)
    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                       forget_n=cfg.forget_n, retain_weight=cfg.retain_weight, mixed_precision=cfg.mixed_precision,
                       seed=cfg.seed, curriculum=cfg.curriculum, anchor_share=cfg.anchor_share, objective=m.objective,
                       remap_target=cfg.remap_target, cufg=cfg.cufg, esd_trajectory=cfg.esd_trajectory)
    res = cfg.resolution or unet.config.sample_size * pipe.vae_scale_factor
    lat_numel = unet.config.in_channels * (res // pipe.vae_scale_factor) ** 2
    sched_gb = tcfg.steps * tcfg.grad_accum * tcfg.batch_size * lat_numel * 4 * (2 + 2 * (tcfg.retain_weight > 0)) / 2**30
    if sched_gb > 16:
        raise ConfigError(f"the training schedule (noise and targets of {tcfg.steps * tcfg.grad_accum:,} micro-steps x "
                          f"{tcfg.batch_size}) would take {sched_gb:.0f} GB of memory: lower --steps or --batch-size")
    if AcceleratorState._shared_state:  # a previous erase() in this process may have used another precision
        AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=(device == "cpu"), gradient_accumulation_steps=1)
    if several(accelerator) and tcfg.batch_size < accelerator.num_processes:
        raise ConfigError(f"--batch-size {tcfg.batch_size} is split between {accelerator.num_processes} processes: "
                          f"use --batch-size >= {accelerator.num_processes}")
    log(f"semu-erase: concept={plan.concept!r} kind={plan.kind} anchor={plan.anchor!r} method={cfg.method} "
        f"preset={cfg.preset} model={model_id} family={recipe.family} targets={len(names)} device={device} "
        f"precision={cfg.mixed_precision}")
    run = EraseRun(cfg=cfg, pipe=pipe, model_id=model_id, recipe=recipe, plan=plan, names=names, method=m, mcfg=mcfg,
                   tcfg=tcfg, accelerator=accelerator, device=device, progress=progress, stop_judge=stop_judge,
                   anchor_rule=anchor_rule)
    run.stage["load"] = load_s
    torch.manual_seed(cfg.seed)
    c = Conditioner(pipe, device)
    run.cond = {"forget": c.embed(plan.forget_prompts), "anchor": c.embed(plan.anchor_prompts), "uncond": c.embed([""])}
    run.acp = pipe.scheduler.alphas_cumprod.to(device)
    return run


def check_several_processes(cfg: EraseConfig) -> None:
    """What runs under several processes (accelerate launch): SEMU, without --robust or --cufg."""
    if cfg.method != "semu":
        raise ConfigError(f"--method {cfg.method} runs in one process: several processes (accelerate launch) run "
                          "--method semu only")
    for flag, on in (("--robust", cfg.robust), ("--cufg", cfg.cufg)):
        if on:
            raise ConfigError(f"{flag} runs in one process: launch semu-erase without accelerate launch")


def _own_latents(run: EraseRun, prompts: list[str], seed_offset: int, desc: str) -> torch.Tensor:
    """Latents the base model generates for ``prompts`` (image i from seed seed*100003 + seed_offset + i). Under
    several processes each generates its share of the generation batches (whole batches, so every image is computed
    in the same batch as with one process, bit for bit) and all gather them."""
    c = run.cfg
    seeds = [c.seed * 100003 + seed_offset + i for i in range(len(prompts))]
    sl = slice(None)
    if several(run.accelerator):
        k = share(run.accelerator, -(-len(prompts) // DEFAULT_BATCH))
        sl = slice(k.start * DEFAULT_BATCH, min(len(prompts), k.stop * DEFAULT_BATCH))
    lat = []
    if prompts[sl]:
        with run.accelerator.autocast():
            lat = [generate(run.pipe, prompts[sl], seeds[sl], steps=c.gen_steps, guidance_scale=c.guidance_scale,
                            output_type="latent", progress=run.progress, desc=desc, height=c.resolution)]
    return torch.cat(gather_list(lat)) if several(run.accelerator) else lat[0]


# ---- stage 1 ------------------------------------------------------------------------------------------------------
def make_forget_set(run: EraseRun) -> None:
    """Forget latents (generated by the model itself, or the user's images), anchor latents under the forget
    prompts (Concept-Ablation style, remap objective only) and the retain set."""
    t0 = time.time()
    plan, tcfg = run.plan, run.tcfg
    n = tcfg.forget_n
    if run.cfg.forget_images:
        res = run.cfg.resolution or run.unet.config.sample_size * run.pipe.vae_scale_factor
        run.latents = encode_images(run.pipe, run.cfg.forget_images, res, run.device)
        n = tcfg.forget_n = len(run.latents)
    else:
        run.latents = _own_latents(run, [plan.forget_prompts[i % len(plan.forget_prompts)] for i in range(n)], 0,
                                   "forget set")
    run.train_latents = run.latents
    run.n_anchor = int(round(tcfg.anchor_share * n)) if tcfg.objective == "remap" else 0  # ESD has no anchor
    if run.n_anchor:
        extra = _own_latents(run, [plan.anchor_prompts[i % len(plan.anchor_prompts)] for i in range(run.n_anchor)], 13,
                             "anchor set")
        run.train_latents = torch.cat([run.latents, extra.to(run.latents)])
    if tcfg.retain_weight > 0 or run.method.needs_retain_gradient:
        t1 = time.time()
        rset = retain_prompt_list(plan, run.recipe, run.cfg.retain_prompts)
        run.retain_latents = _own_latents(run, [rset[i % len(rset)] for i in range(run.cfg.retain_n or n)], 7,
                                          "retain set")
        run.retain_seconds["retain_set"] = time.time() - t1
        run.retain_cond = Conditioner(run.pipe, run.device).embed(rset)
    run.stage["forget_set"] = time.time() - t0


# ---- stage 2 ------------------------------------------------------------------------------------------------------
def make_base_targets(run: EraseRun) -> None:
    """Samples, timesteps, noise and the base model's targets for every training micro-step (before any change)."""
    t0 = time.time()
    n_micro = run.tcfg.steps * run.tcfg.grad_accum
    part = share(run.accelerator, run.tcfg.batch_size) if several(run.accelerator) else None  # this process's share
    with run.accelerator.autocast():
        run.schedule = make_schedule(run.unet, run.train_latents, run.acp, run.cond["forget"], run.cond["anchor"],
                                     run.cond["uncond"], run.tcfg, run.device, n_micro,
                                     retain_latents=run.retain_latents, retain_cond=run.retain_cond,
                                     progress=run.progress, part=part)
    run.stage["targets"] = time.time() - t0


# ---- stage 3 ------------------------------------------------------------------------------------------------------
def compute_forget_gradient(run: EraseRun) -> None:
    """dL_g/dW over the weights the method needs (none for methods without a gradient)."""
    t0 = time.time()
    m = run.method
    run.grads = forget_gradient(run.unet, run.latents, run.acp, run.cond["forget"], run.cond["uncond"],
                                m.gradient_targets(run.unet, run.names), run.tcfg, run.device,
                                run.accelerator.autocast, progress=run.progress) if m.needs_gradient else None
    if m.needs_retain_gradient:
        compute_retain_gradient(run, m.gradient_targets(run.unet, run.names))
    run.stage["gradient"] = time.time() - t0


def compute_retain_gradient(run: EraseRun, targets: list[str]) -> None:
    """What SEMU's retain-aware subspace must avoid: the forget loss's gradient on the retain set, or (retain_source
    "activation") the target layers' input activations on it, as a matrix whose row space and energy are theirs."""
    t0 = time.time()
    if run.cfg.retain_source == "activation":
        c = run.cfg
        run.retain_grads = retain_input_bases(run.unet, run.retain_latents, run.acp, run.retain_cond,
                                              run.cond["uncond"], targets, run.tcfg, run.device,
                                              run.accelerator.autocast, c.retain_energy, c.retain_estimator,
                                              c.retain_sketch, progress=run.progress, passes=c.retain_sketch_passes)
        run.retain_seconds["retain_subspace"] = time.time() - t0
        return
    run.retain_grads = forget_gradient(run.unet, run.retain_latents, run.acp, run.retain_cond, run.cond["uncond"],
                                       targets, run.tcfg, run.device, run.accelerator.autocast, progress=run.progress)
    run.retain_seconds["retain_subspace"] = time.time() - t0


# ---- stage 4 ------------------------------------------------------------------------------------------------------
def setup_method(run: EraseRun) -> None:
    """The method's trainable parameters (SEMU: SVD + reparametrisation). Call inside ``frozen(unet)``."""
    t0 = time.time()
    if run.device.startswith("cuda"):
        torch.cuda.synchronize()
    loss_fn = (forget_loss_fn(run.unet, run.latents, run.acp, run.cond["forget"], run.cond["uncond"], run.tcfg,
                              run.device) if run.method.needs_loss_fn else None)
    run.params = run.method.setup(run.unet, run.names, run.grads, loss_fn=loss_fn, retain_grads=run.retain_grads,
                                  consume=True)
    if several(run.accelerator):  # every process trains from the main process's subspaces, bit for bit
        sync_from_main(run.accelerator, {f"{n}.{k}": v for n, layer in run.method.layers.items()
                                         for k, v in [*layer.named_parameters(), *layer.named_buffers()]
                                         if not k.startswith("base.")})
    if run.device.startswith("cuda"):
        torch.cuda.synchronize()
    run.grads = run.retain_grads = None
    run.stage["setup"] = time.time() - t0


# ---- stage 5 ------------------------------------------------------------------------------------------------------
def train_method(run: EraseRun) -> None:
    """Adam on the method's parameters over the precomputed schedule."""
    t0 = time.time()
    monitor = erasure_monitor(run)
    adversary = robust_adversary(run)
    run.train_result = train(run.unet, run.params, run.schedule, run.train_latents, run.cond["forget"], run.tcfg,
                             run.accelerator, run.device, retain_latents=run.retain_latents,
                             retain_cond=run.retain_cond, acp=run.acp, progress=run.progress,
                             anchor_cond=run.cond["anchor"], monitor=monitor, monitor_every=run.cfg.stop_every,
                             adversary=adversary)
    if monitor is not None:
        run.train_result["stop_history"] = monitor.history
    if adversary is not None:
        run.train_result["robust"] = adversary.summary()
    run.stage["train"] = time.time() - t0


def robust_adversary(run: EraseRun):
    """``--robust``: the embedding-attack adversary of the training loop (None when off); its conditionings start
    from the forget prompts' own (cycled to ``robust_n``)."""
    c = run.cfg
    if not c.robust:
        return None
    from .robust import EmbeddingAdversary, RobustConfig

    h = run.cond["forget"]["hidden"]
    starts = h[torch.arange(c.robust_n) % len(h)]
    rc = RobustConfig(every=c.robust_every, inner=c.robust_inner, n=c.robust_n, lr=c.robust_lr, weight=c.robust_weight,
                      restart=c.robust_restart,
                      guidance=c.guidance_scale, seed=c.seed)
    return EmbeddingAdversary(run.unet, run.latents, run.acp, starts, run.cond["uncond"]["hidden"], rc,
                              run.tcfg.batch_size, run.device, run.accelerator.autocast)


def stop_judge_spec(c: EraseConfig, model_id: str, kind: str) -> str:
    """The judge of ``--stop-every``: ``--stop-judge``, else toy (toy model), nudenet (nudity) or CLIP ViT-B-32."""
    if c.stop_judge:
        return c.stop_judge
    if model_id == "toy":
        return "toy-nudity" if kind == "nudity" else "toy"
    return "nudenet" if kind == "nudity" else "clip:ViT-B-32:openai"


def build_stop_judge(c: EraseConfig, device: str):
    """The early-stop judge, built before the model loads (so a judge without its weights or dependency is refused
    before any model work); None when ``--stop-every`` is off."""
    if not c.stop_every:
        return None
    from .concepts import concept_kind
    from .evaluation.judges import build_judge

    return build_judge(stop_judge_spec(c, "toy" if c.model == "toy" else c.model, c.kind or concept_kind(c.concept)),
                       device)


def erasure_monitor(run: EraseRun):
    """The early-stop check of ``--stop-every`` (None when off): the concept's detected share on a few fixed-seed
    images of the forget prompts, generated by the model being trained."""
    c = run.cfg
    if not c.stop_every:
        return None
    from .monitor import build_monitor

    judge = run.stop_judge or stop_judge_spec(c, run.model_id, run.plan.kind)
    alternatives = list(run.recipe.train.get("retain_concepts", [])) + [run.plan.anchor or ""]
    return build_monitor(run.pipe, run.plan.concept, run.plan.forget_prompts, judge, c.stop_samples, c.seed,
                         run.device, alternatives, threshold=c.stop_detection, gen_steps=c.gen_steps,
                         guidance_scale=c.guidance_scale, height=c.resolution, autocast=run.accelerator.autocast)


# ---- stage 6 ------------------------------------------------------------------------------------------------------
def provenance(run: EraseRun, delta, base_fp) -> dict:
    """What the delta records: every option (from EraseConfig), the plan, the method's choices, the ranks."""
    c, m = run.cfg, run.method
    prov = c.provenance()
    prov.update({
        "toolkit": "semu-diffusion", "toolkit_version": __version__, "concepts": [run.plan.concept],
        "kind": run.plan.kind, "anchor": run.plan.anchor, "anchor_rule": run.anchor_rule, "base_model": run.model_id,
        "base_family": run.recipe.family,
        "base_fingerprint": base_fp, "ranks": delta.ranks, "forget_n": run.tcfg.forget_n,
        "anchor_share": c.anchor_share if run.n_anchor else 0.0,
        "forget_prompts_file": prov.pop("forget_prompts"), "forget_prompts": run.plan.forget_prompts,
        "anchor_prompts": run.plan.anchor_prompts, "targets": c.targets or run.recipe.include,
        "preset_choices": PAPER_PRESETS.get(c.preset or "", {}),
        "method_info": {k: v for k, v in m.info.items() if k not in ("ranks", "energy")},
        "choices": method_choices(run),
        "steps_run": run.train_result.get("steps_run"), "stop_history": run.train_result.get("stop_history"),
        "robust_summary": run.train_result.get("robust"),
    })
    return prov


def method_choices(run: EraseRun) -> dict:
    """The deliberate choices of this run, by name (see README, "Differences from the reference implementations")."""
    c = run.cfg
    return {
        "forget_set": "user images" if c.forget_images else "generated by the base model (data-free)",
        "gradient_projection": ("orthogonal to W, divided by ||W||^2" if c.project else "off") if c.method == "semu" else None,
        "rank_clamp": [c.r_min, c.r_max] if c.method == "semu" else None,
        "conv_svd": c.conv_mode if c.method == "semu" else None,
        "objective": run.tcfg.objective,
        "x_t": ("base model's DDIM trajectory (50 steps, guidance 3)" if c.esd_trajectory
                else "forget latents noised to a uniform timestep"),
        "remap_target": ({"base": "frozen base model's anchor prediction",
                          "current": "current model's anchor prediction, detached"}[c.remap_target]
                         if run.tcfg.objective == "remap" else "ESD negative guidance from the frozen base model"),
        "retain_term": "distillation to the base prediction on retain prompts" if c.retain_weight else "none",
        "anchor_latents": run.n_anchor,
        "curriculum": "pacing (easy->hard order of micro-steps)" if c.curriculum else "off",
        "cufg_gradient_corrector": bool(c.cufg),
        "trained": {"full": "target layers' weights", "salun": "masked weights of every Linear/Conv2d",
                    "esd-x": "cross-attention weights", "esd-u": "non-cross-attention Linear/Conv2d weights",
                    "sap": "top Hessian-diagonal weights of the target layers",
                    "semu": "R inside the gradient subspace of the target layers"}.get(c.method, c.method),
        "biases": ("trained with the weights of the same modules (method option train_bias)"
                   if run.method.options.get("train_bias") else "not trained"),
        "retain_subspace": (("the retain set's leading input activation directions (conditional and unconditional "
                             f"passes) holding {c.retain_energy * 100:g}% of their energy (estimator "
                             f"{c.retain_estimator}, sketch {c.retain_sketch} in {c.retain_sketch_passes} pass(es); per layer the energy reached in "
                             "method_info.retain_subspace.layers)"
                             if c.retain_source == "activation" else
                             f"the retain gradient's leading {c.retain_side}put directions holding "
                             f"{c.retain_energy * 100:g}% of its energy") + " removed from the forget gradient before the SVD"
                            if run.method.needs_retain_gradient else "off"),
        "early_stop": (f"every {c.stop_every} steps, stop once <= {c.stop_detection:.0%} of {c.stop_samples} fixed-seed "
                       "samples show the concept" if c.stop_every else "off (all --steps)"),
    }


def export_delta(run: EraseRun):
    """The weight change as a Delta (method restored to base afterwards by the caller)."""
    t0 = time.time()
    delta = run.method.export(run.unet)
    run.stage["export"] = time.time() - t0
    return delta


def train_and_export(run: EraseRun):
    """Stages 4-6: method setup, training and export with the UNet frozen (only the method's own parameters get
    gradients; the caller's requires_grad comes back) and, under mixed precision, the frozen weights cast; the
    UNet is back at its base weights afterwards. Returns the Delta."""
    unet, m = run.unet, run.method
    with frozen(unet):
        setup_method(run)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(run.cfg.mixed_precision)
        saved = {}
        try:
            if dtype is not None:
                saved = cast_frozen(unet, dtype)
            train_method(run)
            return export_delta(run)
        finally:
            restore_frozen(unet, saved)  # names are those of the wrapped UNet: restore before unwrapping
            m.restore(unet)


MAX_UPDATE_RATIO = 10.0  # an update whose norm is this many times its base weight's means training diverged


def check_update(run: EraseRun, delta) -> None:
    """Refuse a diverged erasure before anything is written: every update finite, and no layer's update norm above
    MAX_UPDATE_RATIO x its base weight's norm (a sane erasure changes a layer by a small fraction of it)."""
    lr = run.tcfg.lr
    for n in delta.modules():
        mod = run.unet.get_submodule(n)
        dw = delta.delta_weight(n) if (n in delta.lora or n in delta.dense) else None
        for t in (dw, delta.dense_bias.get(n)):
            if t is not None and not torch.isfinite(t).all():
                raise TrainingDiverged(f"training diverged: the update of {n} is not finite: lower --lr (now {lr:g}); "
                                       "no delta was written")
        if dw is None:
            continue
        dn, wn = float(dw.double().norm()), float(mod.weight.detach().double().norm())
        if dn > MAX_UPDATE_RATIO * wn and dn > 1e-3:
            raise TrainingDiverged(f"training diverged: the update of {n} has {dn / max(wn, 1e-30):.1e} x the norm of "
                                   f"its base weight (limit {MAX_UPDATE_RATIO:g} x): lower --lr (now {lr:g}); no delta "
                                   "was written")


def write_outputs(run: EraseRun, delta, extra_provenance=None) -> tuple[Path | None, dict]:
    """Check the update (a diverged run writes nothing), fingerprint the (restored) base, build the provenance
    (``extra_provenance(prov)`` may amend it), write the delta and the optional kohya copy."""
    t0 = time.time()
    check_update(run, delta)
    base_fp = fingerprint(run.unet, delta.modules())  # the base weights are restored exactly at this point
    prov = provenance(run, delta, base_fp)
    if extra_provenance is not None:
        extra_provenance(prov)
    main = run.accelerator.is_main_process
    path = None
    if run.cfg.out and main:  # several processes: the main one writes (atomically), the others wait for it
        path = save_delta(run.cfg.out, delta, prov, dtype=run.cfg.save_dtype)
        if run.cfg.kohya:
            from .delta import to_kohya

            to_kohya(path, run.cfg.kohya)
    if several(run.accelerator):  # the main process's path, once its file is there
        from accelerate.utils import broadcast_object_list

        path = broadcast_object_list([path])[0]
    run.stage["export"] = run.stage.get("export", 0.0) + time.time() - t0
    return path, prov


def erase(concept: str | EraseConfig | None = None, *, pipe=None, progress: bool = True, log=print,
          **options) -> EraseResult:
    """Erase ``concept`` from the model and write the delta to ``out`` (if given).

    ``options`` are the fields of :class:`~semu_diffusion.config.EraseConfig` (or pass one as ``concept``).
    Unset options come from the paper preset, then the model family's recipe in pipelines/<family>.toml.
    The base model is never modified on disk; the in-memory UNet is restored to its base weights and its
    ``requires_grad`` state before returning.
    """
    t_all = time.time()
    if isinstance(concept, EraseConfig):
        if options:
            raise TypeError("pass either an EraseConfig or keyword options, not both")
        cfg = concept
    else:
        cfg = config_from_kwargs(concept=concept, **options)
    run = prepare(cfg, pipe=pipe, progress=progress, log=log)
    if getattr(run.method, "closed_form", False):
        return closed_form_erase(run, t_all)
    make_forget_set(run)
    make_base_targets(run)
    compute_forget_gradient(run)
    unet_params = sum(p.numel() for p in run.unet.parameters())
    delta = train_and_export(run)
    path, prov = write_outputs(run, delta)
    stats = {"concept": run.plan.concept, "anchor": run.plan.anchor,
             **run_stats(run, run.method, delta, path, unet_params, t_all)}
    return EraseResult(out=path, stats=stats, delta=delta, provenance=prov)


def closed_form_erase(run: EraseRun, t_all: float, plans=None, extra_provenance=None) -> EraseResult:
    """A method that edits weights in closed form (UCE): no forget set, gradient or training; the forget prompts,
    their anchors and the retain prompts go straight into one solve per layer. ``plans``: the concepts of a joint
    erase (their prompts already merged into ``run.plan``), whose retain prompts leave out every one of them."""
    t0 = time.time()
    m, pipe = run.method, run.pipe
    run.names = m.select(run.names, run.unet)
    tok = pipe.tokenizer

    def last_word(prompts):  # index of the last word token (before the end-of-text token)
        return [max(1, len(tok(p, truncation=True, max_length=tok.model_max_length).input_ids) - 2) for p in prompts]

    c = Conditioner(pipe, run.device)
    keep = retain_prompt_list(plans or run.plan, run.recipe, run.cfg.retain_prompts)
    preserve = c.embed(keep)["hidden"].float().cpu() if keep else None
    delta = m.edit(run.unet, run.names, run.cond["forget"]["hidden"].float().cpu(), last_word(run.plan.forget_prompts),
                   run.cond["anchor"]["hidden"].float().cpu(), last_word(run.plan.anchor_prompts), preserve)
    run.stage["setup"] = time.time() - t0
    run.train_result = {"losses": [float("nan")], "step_seconds": 0.0, "steps_run": 0}
    run.latents = torch.empty(0)
    unet_params = sum(p.numel() for p in run.unet.parameters())
    path, prov = write_outputs(run, delta, extra_provenance)
    stats = {"concept": run.plan.concept, "anchor": run.plan.anchor,
             **run_stats(run, m, delta, path, unet_params, t_all)}
    return EraseResult(out=path, stats=stats, delta=delta, provenance=prov)


def run_stats(run, meth, delta, path, unet_params: int, t_all: float) -> dict:
    """The figures of a finished erase run (method, ranks, sizes, losses, stage times), shared by single- and
    multi-concept erasure."""
    tr = run.train_result
    trainable = meth.trainable_numel()
    ranks = list(delta.ranks.values())
    stats = {
        "method": run.cfg.method, "preset": run.cfg.preset, "layers": len(run.names), "trainable_params": trainable,
        "unet_params": unet_params, "trainable_frac": trainable / unet_params,
        "rank_min": min(ranks) if ranks else None, "rank_max": max(ranks) if ranks else None,
        "rank_mean": (sum(ranks) / len(ranks)) if ranks else None,
        "delta_bytes": path.stat().st_size if path else None, "final_loss": tr["losses"][-1],
        "first_loss": tr["losses"][0], "step_seconds": tr["step_seconds"], "steps_run": tr.get("steps_run"),
        "stop_history": tr.get("stop_history"),
        "forget_latents": len(run.latents), "anchor_latents": run.n_anchor,
        "stage_seconds": {k: round(v, 3) for k, v in run.stage.items()}, "seconds": time.time() - t_all,
        "retain_seconds": {k: round(v, 3) for k, v in run.retain_seconds.items()},
        "device": run.device, "mixed_precision": run.cfg.mixed_precision, "out": str(path) if path else None,
        "kohya_out": str(run.cfg.kohya) if (path and run.cfg.kohya) else None,
    }
    if run.device.startswith("cuda"):
        stats["cuda_max_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return stats
