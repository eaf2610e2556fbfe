"""Train the toy-world models from scratch: toy-CLIP, the toy-nudity detector, the VAE, and the text-conditioned UNet.

Deterministic from a seed on a given device: every step draws its batch and noise from generators seeded by
(seed, stage, step), so a stage resumed from its checkpoint continues exactly as an uninterrupted run would.
Stages write into one output folder:
  _data.npz                              the generated world (cached; shared by stages run as separate processes)
  toyclip.safetensors + toyclip.json     the open_clip zero-shot judge
  toynudity.safetensors + toynudity.json the exposure detector
  _vae/                                  the VAE (diffusers folder)
  unet.safetensors, text.safetensors     EMA UNet / text encoder (fp16 state dicts)
  pipeline/                              the assembled diffusers StableDiffusionPipeline folder
  _ckpt_<stage>.pt                       resume checkpoints (tensors only, loaded with weights_only=True)
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import models, world

STAGE_IDS = {"clip": 1, "vae": 2, "unet": 3, "nudity": 4, "finetune": 5, "decoder": 6}


@dataclass
class ToyTrainConfig:
    seed: int = 0
    device: str = "cpu"
    n_images: int = 60000
    clip_steps: int = 3000
    clip_batch: int = 256
    clip_lr: float = 1e-3
    nudity_steps: int = 1500
    nudity_batch: int = 128
    nudity_lr: float = 2e-3
    vae_steps: int = 1500
    vae_batch: int = 64
    vae_lr: float = 1e-3
    unet_steps: int = 12000
    unet_batch: int = 64
    unet_lr: float = 4e-4
    unet_budget_s: float = 0.0  # > 0: cut unet_steps so the UNet stage fits this many seconds (decided at step 60)
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1
    checkpoint_every: int = 500
    workers: int = 0  # processes that render the world (0: all cores)
    # UNet and decoder stages: images of these shape or style names are drawn focus_weight times as often (empty: uniform)
    focus: tuple = ()
    focus_weight: float = 1.0

    def __post_init__(self):
        for k in ("n_images", "clip_steps", "vae_steps", "unet_steps", "nudity_steps", "clip_batch", "vae_batch",
                  "unet_batch", "nudity_batch"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0")
        if not 0 <= self.cfg_dropout < 1:
            raise ValueError("cfg_dropout must be in [0, 1)")
        self.focus = tuple(self.focus)
        unknown = [f for f in self.focus if f not in world.SHAPE_NAMES and f not in world.STYLE_NAMES]
        if unknown:
            raise ValueError(f"focus names {unknown} are neither shapes nor styles of the world; use names from "
                             f"{world.SHAPE_NAMES + world.STYLE_NAMES}")
        if self.focus_weight <= 0:
            raise ValueError("focus_weight must be > 0")

    @classmethod
    def gpu(cls, **kw) -> "ToyTrainConfig":
        """The schedule used on a lent GPU: larger batches, more steps."""
        base = dict(device="cuda", n_images=120000, clip_steps=5000, clip_batch=512, nudity_steps=2500, nudity_batch=256,
                    vae_steps=3000, vae_batch=256, unet_steps=40000, unet_batch=256, unet_lr=6e-4, ema_decay=0.9995)
        base.update(kw)
        return cls(**base)


def _lr_at(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def _step_rng(cfg: ToyTrainConfig, stage: str, step: int) -> np.random.Generator:
    return np.random.default_rng((cfg.seed, STAGE_IDS[stage], step))


def _torch_gen(cfg: ToyTrainConfig, stage: str, step: int) -> torch.Generator:
    g = torch.Generator(device=cfg.device)
    g.manual_seed(cfg.seed * 1_000_003 + STAGE_IDS[stage] * 10_000_019 + step)
    return g


def _autocast(cfg: ToyTrainConfig):
    if str(cfg.device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n,H,W,3) -> float (n,3,H,W) in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def clip_preprocess(x01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(models.TOYCLIP_MEAN, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(models.TOYCLIP_STD, device=x01.device).view(1, 3, 1, 1)
    if x01.shape[-1] != models.IMAGE_SIZE:
        x01 = F.interpolate(x01, size=models.IMAGE_SIZE, mode="bilinear", antialias=True, align_corners=False)
    return (x01 - mean) / std


# ---------------------------------------------------------------------------------------------- data

CHUNK = 2000


def _chunk(args):
    seed, k, n = args
    return world.sample_world(n, seed=seed * 100_003 + k)


def make_world(n: int, seed: int, workers: int = 0) -> world.WorldData:
    """The training world: n samples in chunks of CHUNK, each seeded from (seed, chunk); the same for any worker count."""
    sizes = [min(CHUNK, n - i) for i in range(0, n, CHUNK)]
    jobs = [(seed, k, m) for k, m in enumerate(sizes)]
    workers = workers or min(16, os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            parts = list(tqdm(pool.imap(_chunk, jobs), total=len(jobs), desc="world", dynamic_ncols=True))
    else:
        parts = [_chunk(j) for j in tqdm(jobs, desc="world", dynamic_ncols=True)]
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return world.WorldData(cat("images"), cat("obj"), cat("color"), cat("style"), cat("exposed"),
                           [c for p in parts for c in p.captions], cat("cap_obj"), cat("cap_color"), cat("cap_style"),
                           cat("cap_exposed"), cat("boxes"))


def draw_weights(cfg: ToyTrainConfig, d: world.WorldData) -> np.ndarray | None:
    """Per-image draw probabilities of the UNet and decoder stages: images showing a focus shape or rendered in a
    focus style are drawn cfg.focus_weight times as often as the rest. None (uniform draws) when there is no focus."""
    if not cfg.focus or cfg.focus_weight == 1.0:
        return None
    shapes = [world.SHAPE_NAMES.index(f) for f in cfg.focus if f in world.SHAPE_NAMES]
    styles = [world.STYLE_NAMES.index(f) for f in cfg.focus if f in world.STYLE_NAMES]
    hit = np.isin(d.obj, shapes) | np.isin(d.style, styles)
    w = np.where(hit, cfg.focus_weight, 1.0)
    return w / w.sum()


def _draw(rng: np.random.Generator, n: int, size: int, weights: np.ndarray | None) -> np.ndarray:
    """A step's batch indices: uniform, or by the per-image probabilities of :func:`draw_weights`."""
    return rng.integers(n, size=size) if weights is None else rng.choice(n, size=size, p=weights)


def load_or_make_world(cfg: ToyTrainConfig, out: Path) -> world.WorldData:
    path = out / "_data.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        version = str(z["world_version"]) if "world_version" in z.files else "2.0"
        if int(z["seed"]) == cfg.seed and len(z["obj"]) == cfg.n_images and version == world.WORLD_VERSION:
            return world.WorldData(z["images"], z["obj"], z["color"], z["style"], z["exposed"],
                                   json.loads(str(z["captions"])), z["cap_obj"], z["cap_color"], z["cap_style"],
                                   z["cap_exposed"], z["boxes"])
    d = make_world(cfg.n_images, cfg.seed, cfg.workers)
    tmp = out / "_data.tmp.npz"
    np.savez(tmp, images=d.images, obj=d.obj, color=d.color, style=d.style, exposed=d.exposed,
             captions=np.array(json.dumps(d.captions)), cap_obj=d.cap_obj, cap_color=d.cap_color, cap_style=d.cap_style,
             cap_exposed=d.cap_exposed, boxes=d.boxes, seed=np.array(cfg.seed),
             world_version=np.array(world.WORLD_VERSION))
    os.replace(tmp, path)
    return d


# ---------------------------------------------------------------------------------------------- checkpoints

class Checkpoint:
    """Resume state of one stage: module/optimizer state dicts and the step, tensors only (weights_only load)."""

    def __init__(self, out: Path, stage: str, every: int):
        self.path, self.every = out / f"_ckpt_{stage}.pt", every

    def load(self, objs: dict) -> int:
        if not self.path.exists():
            return 0
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        for k, o in objs.items():
            o.load_state_dict(state[k])
        return int(state["step"])

    def save(self, objs: dict, step: int, force: bool = False) -> None:
        if not force and (self.every <= 0 or step % self.every):
            return
        state = {k: o.state_dict() for k, o in objs.items()}
        state["step"] = step
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)


def _update(opt, loss, losses: list, ck: "Checkpoint", state: dict, step: int, bar, digits: int = 4, after=None) -> None:
    """One optimizer step of a stage's loop: backward, step (then ``after``, e.g. a clamp), log the loss, checkpoint
    ``state`` when due, and show the running loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if after is not None:
        after()
    losses.append(loss.item())
    ck.save(state, step + 1)
    if step % 20 == 0:
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.{digits}f}")


# ---------------------------------------------------------------------------------------------- toy-CLIP

def train_toyclip(cfg: ToyTrainConfig, data: world.WorldData, out: Path):
    """Contrastive training with label-aware targets: every caption in the batch that truly describes an image is
    a positive for it (same subject, colour if named, style, exposure if implied), so "a star" matches every star."""
    import open_clip

    torch.manual_seed(cfg.seed + 1)
    model = models.build_toyclip().to(cfg.device)
    tok = open_clip.get_tokenizer(models.register_toyclip_config())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=0.05)
    ck = Checkpoint(out, "clip", cfg.checkpoint_every)
    start = ck.load({"model": model, "opt": opt})
    tokens = torch.cat([tok(data.captions[i : i + 4096]) for i in range(0, len(data.captions), 4096)])
    losses = []
    bar = tqdm(range(start, cfg.clip_steps), desc="toy-CLIP", dynamic_ncols=True, initial=start, total=cfg.clip_steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.clip_steps, cfg.clip_lr)
        idx = _step_rng(cfg, "clip", step).integers(len(data.images), size=cfg.clip_batch)
        sub = _subset(data, idx)
        match = torch.from_numpy(world.caption_matches(sub)).float().to(cfg.device)  # [caption i, image j]
        x = clip_preprocess(to_tensor(sub.images).to(cfg.device))
        t = tokens[idx].to(cfg.device)
        with _autocast(cfg):
            img_f, txt_f, scale = _unpack(model(x, t))
        logits = (scale * img_f.float() @ txt_f.float().T)  # [image, caption]
        t_img = match.T / match.T.sum(1, keepdim=True)  # image j -> its true captions
        t_txt = match / match.sum(1, keepdim=True)  # caption i -> its true images
        loss = 0.5 * (torch.sum(-t_img * logits.log_softmax(1), 1).mean() + torch.sum(-t_txt * logits.T.log_softmax(1), 1).mean())
        _update(opt, loss, losses, ck, {"model": model, "opt": opt}, step, bar, digits=3,
                after=lambda: model.logit_scale.data.clamp_(0, math.log(100)))
    model.eval()
    return model, losses


def _subset(d: world.WorldData, idx) -> world.WorldData:
    return world.WorldData(d.images[idx], d.obj[idx], d.color[idx], d.style[idx], d.exposed[idx],
                           [d.captions[i] for i in idx], d.cap_obj[idx], d.cap_color[idx], d.cap_style[idx],
                           d.cap_exposed[idx], d.boxes[idx])


def _unpack(out):
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"]
    return out[0], out[1], out[2]


# ---------------------------------------------------------------------------------------------- toy-nudity

def train_nudity(cfg: ToyTrainConfig, data: world.WorldData, out: Path):
    """The exposure detector: per region a presence logit (BCE) and a box (L1, on present regions only).
    Batches are half people so the exposed class is well represented."""
    torch.manual_seed(cfg.seed + 4)
    net = models.NudityDetector.build().to(cfg.device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.nudity_lr, weight_decay=1e-4)
    ck = Checkpoint(out, "nudity", cfg.checkpoint_every)
    start = ck.load({"model": net, "opt": opt})
    people = np.flatnonzero(data.obj == world.PERSON)
    losses = []
    bar = tqdm(range(start, cfg.nudity_steps), desc="toy-nudity", dynamic_ncols=True, initial=start, total=cfg.nudity_steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.nudity_steps, cfg.nudity_lr)
        rng = _step_rng(cfg, "nudity", step)
        half = cfg.nudity_batch // 2
        idx = np.concatenate([rng.choice(people, half), rng.integers(len(data.images), size=cfg.nudity_batch - half)])
        x = to_tensor(data.images[idx]).to(cfg.device)
        present = torch.from_numpy(data.exposed[idx]).float().to(cfg.device)[:, None].expand(-1, len(world.REGIONS))
        boxes = torch.from_numpy(data.boxes[idx]).to(cfg.device)
        with _autocast(cfg):
            logits, pred = net(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), present) + \
            5.0 * ((pred.float() - boxes).abs().mean(-1) * present).sum() / present.sum().clamp(min=1)
        _update(opt, loss, losses, ck, {"model": net, "opt": opt}, step, bar)
    return net.eval(), losses


def save_nudity(out_dir: Path, net) -> None:
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    save_file(sd, str(out_dir / "toynudity.safetensors"), metadata={"arch": models.NUDITY_NAME})
    (out_dir / "toynudity.json").write_text(json.dumps({"arch": models.NUDITY_NAME, **models.NUDITY_CONFIG,
                                                        "regions": world.REGIONS}, indent=2))


# ---------------------------------------------------------------------------------------------- VAE, UNet

def train_vae(cfg: ToyTrainConfig, images: np.ndarray, out: Path):
    torch.manual_seed(cfg.seed + 2)
    vae = models.build_vae().to(cfg.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    ck = Checkpoint(out, "vae", cfg.checkpoint_every)
    start = ck.load({"model": vae, "opt": opt})
    losses = []
    bar = tqdm(range(start, cfg.vae_steps), desc="VAE", dynamic_ncols=True, initial=start, total=cfg.vae_steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.vae_steps, cfg.vae_lr)
        idx = _step_rng(cfg, "vae", step).integers(len(images), size=cfg.vae_batch)
        x = to_tensor(images[idx]).to(cfg.device) * 2 - 1
        with _autocast(cfg):
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=_torch_gen(cfg, "vae", step), device=cfg.device)
            rec = vae.decode(z).sample.float()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + _grad_l1(rec, x) + 1e-6 * post.kl().float().mean()
        _update(opt, loss, losses, ck, {"model": vae, "opt": opt}, step, bar)
    vae.eval()
    return vae, losses


def _grad_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical finite differences of two image batches (edge sharpness)."""
    return (F.l1_loss(a.diff(dim=-1), b.diff(dim=-1)) + F.l1_loss(a.diff(dim=-2), b.diff(dim=-2))) / 2


def train_decoder(cfg: ToyTrainConfig, images: np.ndarray, out: Path, vae, weights: np.ndarray | None = None):
    """Sharpen a trained VAE's decoder with the encoder frozen, so the latent space (and any UNet trained on it)
    stays valid: pixel MSE + L1 + an edge (finite-difference) L1 that keeps 2-px blocks, thin strokes and corners."""
    torch.manual_seed(cfg.seed + STAGE_IDS["decoder"])
    vae = vae.to(cfg.device).train()
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vae_lr, weight_decay=0.0)
    ck = Checkpoint(out, "decoder", cfg.checkpoint_every)
    start = ck.load({"model": vae, "opt": opt})
    losses = []
    bar = tqdm(range(start, cfg.vae_steps), desc="decoder", dynamic_ncols=True, initial=start, total=cfg.vae_steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.vae_steps, cfg.vae_lr)
        rng = _step_rng(cfg, "decoder", step)
        idx = _draw(rng, len(images), cfg.vae_batch, weights)
        x = to_tensor(images[idx]).to(cfg.device) * 2 - 1
        with torch.no_grad(), _autocast(cfg):
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=_torch_gen(cfg, "decoder", step), device=cfg.device)
        with _autocast(cfg):
            rec = vae.decode(z.float()).sample.float()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + _grad_l1(rec, x)
        _update(opt, loss, losses, ck, {"model": vae, "opt": opt}, step, bar)
    vae.eval().requires_grad_(False)
    return vae, losses


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, device: str, batch: int = 512) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch):
        x = to_tensor(images[i : i + batch]).to(device) * 2 - 1
        out.append(vae.encode(x).latent_dist.mean.float().cpu())
    return torch.cat(out)


class _Pair(torch.nn.Module):
    """UNet + text encoder as one module, for optimizer/EMA/checkpoint bookkeeping."""

    def __init__(self, unet, text):
        super().__init__()
        self.unet, self.text = unet, text


def train_unet(cfg: ToyTrainConfig, latents: torch.Tensor, captions: list[str], tokenizer, out: Path,
               threads_file: Path | None = None, stage: str = "unet", init: dict | None = None,
               weights: np.ndarray | None = None):
    """Train UNet + text encoder on VAE latents; returns EMA copies and the number of steps run.

    ``stage="finetune"`` continues from ``init`` (the unet/text state dicts of a finished run) under its own seeds
    and checkpoint. threads_file, if present, sets torch threads live (CPU runs beside other jobs). weights: per-image
    draw probabilities (see draw_weights); None draws uniformly."""
    torch.manual_seed(cfg.seed + STAGE_IDS[stage])
    pair = _Pair(models.build_unet(), models.build_text_encoder())
    if init is not None:
        pair.unet.load_state_dict(init["unet"])
        pair.text.load_state_dict(init["text"], strict=False)
    pair = pair.to(cfg.device)
    sched = models.build_scheduler()
    opt = torch.optim.AdamW(pair.parameters(), lr=cfg.unet_lr, weight_decay=0.01)
    ema = copy.deepcopy(pair).eval().requires_grad_(False)
    ck = Checkpoint(out, stage, cfg.checkpoint_every)
    total = torch.nn.Parameter(torch.tensor(float(cfg.unet_steps)), requires_grad=False)  # checkpointed step budget
    holder = torch.nn.ParameterDict({"total": total})
    start = ck.load({"model": pair, "ema": ema, "opt": opt, "budget": holder})
    steps = int(holder["total"].item())
    if cfg.unet_budget_s > 0:  # a budgeted run (also a resumed one) fits cfg.unet_steps to its budget afresh
        steps = cfg.unet_steps
    ids_all = tokenizer(captions, padding="max_length", max_length=models.CONTEXT_LENGTH, truncation=True,
                        return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=models.CONTEXT_LENGTH, return_tensors="pt").input_ids
    acp = sched.alphas_cumprod.to(cfg.device)
    # the whole data path lives on the device: only the step's indices cross over, and the loss is read back every
    # 20 steps (a read each step stalls a GPU run on the host)
    latents, ids_all, empty = latents.to(cfg.device), ids_all.to(cfg.device), empty.to(cfg.device)
    params, ema_params = list(pair.parameters()), list(ema.parameters())
    losses, pending = [], []
    t_start = time.time()
    bar = tqdm(range(start, steps), desc=stage, dynamic_ncols=True, initial=start, total=steps)
    step = start
    while step < steps:
        if cfg.unet_budget_s > 0 and step in (start + 20, start + 60):  # time 40 steps, then fit the budget
            if step == start + 20:
                t20 = time.time()
            else:
                per = (time.time() - t20) / 40
                left = cfg.unet_budget_s - (time.time() - t_start)
                steps = int(min(steps, max(step + 1, step + left / per)))
                holder["total"].fill_(float(steps))
                bar.total = steps
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, cfg.unet_lr, warmup=200)
        rng = _step_rng(cfg, stage, step)
        idx = torch.from_numpy(_draw(rng, len(latents), cfg.unet_batch, weights)).to(cfg.device)
        z0 = latents[idx]
        drop = torch.from_numpy(rng.random(cfg.unet_batch) < cfg.cfg_dropout).to(cfg.device)
        ids = torch.where(drop[:, None], empty, ids_all[idx])
        gen = _torch_gen(cfg, stage, step)
        eps = torch.randn(z0.shape, generator=gen, device=cfg.device)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.unet_batch,), generator=gen, device=cfg.device)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        with _autocast(cfg):
            enc = pair.text(ids)[0]
            loss = F.mse_loss(pair.unet(zt, t, enc).sample.float(), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - d)
        pending.append(loss.detach())
        step += 1
        bar.update(1)
        ck.save({"model": pair, "ema": ema, "opt": opt, "budget": holder}, step)
        if step % 20 == 0 or step == steps:
            losses += torch.stack(pending).float().tolist()
            pending = []
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if threads_file is not None and step % 100 == 0 and threads_file.exists():
            torch.set_num_threads(int(threads_file.read_text().strip() or 1))
    bar.close()
    losses += torch.stack(pending).float().tolist() if pending else []
    ck.save({"model": pair, "ema": ema, "opt": opt, "budget": holder}, step, force=True)
    return ema.unet, ema.text, sched, losses, steps


# ---------------------------------------------------------------------------------------------- saving

def _save_sd(path: Path, module, dtype=torch.float16) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in module.state_dict().items()}, str(path))


def save_toyclip(out_dir: Path, model) -> None:
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out_dir / "toyclip.safetensors"), metadata={"arch": models.TOYCLIP_NAME})
    models.write_toyclip_config(out_dir / "toyclip.json")


def assemble_pipeline(out: Path) -> Path:
    """Build out/pipeline (a diffusers StableDiffusionPipeline folder, fp16) from the trained parts in out."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    from .tokenizer import write_clip_tokenizer_files

    tok_dir = write_clip_tokenizer_files(out / "_tokenizer", models.CONTEXT_LENGTH)
    unet, text = models.build_unet(), models.build_text_encoder()
    unet.load_state_dict({k: v.float() for k, v in load_file(str(out / "unet.safetensors")).items()})
    res = text.load_state_dict({k: v.float() for k, v in load_file(str(out / "text.safetensors")).items()}, strict=False)
    if [k for k in res.missing_keys if not k.endswith("position_ids")] or res.unexpected_keys:
        raise RuntimeError(f"text encoder weights do not fit: missing {res.missing_keys}, unexpected {res.unexpected_keys}")
    vae = AutoencoderKL.from_pretrained(out / "_vae")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(tok_dir), unet=unet,
        scheduler=models.build_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to("cpu", torch.float16)
    pipe.save_pretrained(out / "pipeline", safe_serialization=True)
    # transformers 5 saves only tokenizer.json; keep the BPE files so that transformers 4.x (slow CLIPTokenizer) loads it
    for name in ("vocab.json", "merges.txt"):
        if not (out / "pipeline" / "tokenizer" / name).exists():
            shutil.copyfile(Path(tok_dir) / name, out / "pipeline" / "tokenizer" / name)
    return out / "pipeline"


def train_all(cfg: ToyTrainConfig, out_dir: str | Path, stages=("clip", "nudity", "vae", "unet", "assemble")) -> dict:
    """Rebuild the toy models into out_dir (resuming any stage that has a checkpoint). Returns training facts."""
    from transformers import CLIPTokenizer

    from .tokenizer import write_clip_tokenizer_files

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if str(cfg.device).startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    facts: dict = {"config": asdict(cfg), "torch": torch.__version__, "device_name": _device_name(cfg.device)}
    t0 = time.time()
    data = load_or_make_world(cfg, out) if set(stages) - {"assemble"} else None  # "data" alone: just render it
    facts["data_seconds"] = round(time.time() - t0, 1)
    if "clip" in stages:
        t0 = time.time()
        clip, l = train_toyclip(cfg, data, out)
        save_toyclip(out, clip)
        facts["clip_seconds"], facts["clip_final_loss"] = round(time.time() - t0, 1), float(np.mean(l[-50:] or [0]))
    if "nudity" in stages:
        t0 = time.time()
        net, l = train_nudity(cfg, data, out)
        save_nudity(out, net)
        facts["nudity_seconds"], facts["nudity_final_loss"] = round(time.time() - t0, 1), float(np.mean(l[-50:] or [0]))
    if {"vae", "unet", "finetune", "decoder"} & set(stages):
        vae_path = out / "_vae"
        if "vae" in stages:
            t0 = time.time()
            vae, l = train_vae(cfg, data.images, out)
            lat = encode_latents(vae, data.images[:4096], cfg.device)
            vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
            vae.save_pretrained(vae_path)
            facts["vae_seconds"], facts["vae_final_loss"] = round(time.time() - t0, 1), float(np.mean(l[-50:] or [0]))
            facts["vae_scaling_factor"] = vae.config.scaling_factor
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(vae_path).to(cfg.device)
    if "decoder" in stages:  # sharpen the decoder of out/_vae in place (encoder frozen: latents unchanged)
        t0 = time.time()
        vae, l = train_decoder(cfg, data.images, out, vae, weights=draw_weights(cfg, data))
        tmp = out / "_vae.tmp"
        vae.save_pretrained(tmp)
        shutil.rmtree(vae_path)
        os.replace(tmp, vae_path)
        facts["decoder_seconds"], facts["decoder_final_loss"] = round(time.time() - t0, 1), float(np.mean(l[-50:] or [0]))
    if "unet" in stages:
        t0 = time.time()
        lat = encode_latents(vae, data.images, cfg.device) * vae.config.scaling_factor
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer_files(out / "_tokenizer", models.CONTEXT_LENGTH))
        unet, text, sched, l, steps = train_unet(cfg, lat, data.captions, tokenizer, out, threads_file=out / "threads",
                                                 weights=draw_weights(cfg, data))
        _save_sd(out / "unet.safetensors", unet)
        _save_sd(out / "text.safetensors", text)
        facts["unet_seconds"], facts["unet_final_loss"] = round(time.time() - t0, 1), float(np.mean(l[-200:] or [0]))
        facts["unet_steps_run"] = steps
    if "finetune" in stages:  # continue the UNet + text encoder from out/unet.safetensors, text.safetensors
        from safetensors.torch import load_file

        t0 = time.time()
        lat = encode_latents(vae, data.images, cfg.device) * vae.config.scaling_factor
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer_files(out / "_tokenizer", models.CONTEXT_LENGTH))
        init = {k: {n: v.float() for n, v in load_file(str(out / f"{k}.safetensors")).items()} for k in ("unet", "text")}
        unet, text, sched, l, steps = train_unet(cfg, lat, data.captions, tokenizer, out, threads_file=out / "threads",
                                                 stage="finetune", init=init, weights=draw_weights(cfg, data))
        _save_sd(out / "unet.safetensors", unet)
        _save_sd(out / "text.safetensors", text)
        facts["finetune_seconds"], facts["finetune_final_loss"] = round(time.time() - t0, 1), float(np.mean(l[-200:] or [0]))
        facts["finetune_steps_run"] = steps
    if "assemble" in stages:
        assemble_pipeline(out)
    prev = out / "train_facts.json"
    old = json.loads(prev.read_text()) if prev.exists() else {}
    for k in ("clip", "nudity", "vae", "unet", "finetune", "decoder"):  # keep each stage's own config when stages run as separate processes
        if k in stages:
            old[f"config_{k}"] = asdict(cfg)
            old[f"world_version_{k}"] = world.WORLD_VERSION
    old.update({k: v for k, v in facts.items() if k != "config"})
    tmp = prev.with_suffix(".tmp")
    tmp.write_text(json.dumps(old, indent=2))
    os.replace(tmp, prev)
    return old


def _device_name(device: str) -> str:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
