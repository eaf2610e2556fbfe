"""Train the toy-world models from scratch: toy-CLIP, the VAE, and the text-conditioned UNet.

Deterministic from a seed on a given device. Stages write into one output folder:
  toyclip.safetensors + toyclip.json     the open_clip zero-shot judge
  pipeline/                              a diffusers StableDiffusionPipeline folder
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import models, world


@dataclass
class ToyTrainConfig:
    seed: int = 0
    device: str = "cpu"
    n_images: int = 40000
    clip_steps: int = 1500
    clip_batch: int = 128
    clip_lr: float = 1e-3
    vae_steps: int = 800
    vae_batch: int = 64
    vae_lr: float = 1e-3
    unet_steps: int = 6000
    unet_batch: int = 64
    unet_lr: float = 4e-4
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1

    def __post_init__(self):
        for k in ("n_images", "clip_steps", "vae_steps", "unet_steps", "clip_batch", "vae_batch", "unet_batch"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0")
        if not 0 <= self.cfg_dropout < 1:
            raise ValueError("cfg_dropout must be in [0, 1)")


def _lr_at(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n,H,W,3) -> float (n,3,H,W) in [0,1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def clip_preprocess(x01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(models.TOYCLIP_MEAN, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(models.TOYCLIP_STD, device=x01.device).view(1, 3, 1, 1)
    if x01.shape[-1] != models.IMAGE_SIZE:
        x01 = F.interpolate(x01, size=models.IMAGE_SIZE, mode="bilinear", antialias=True, align_corners=False)
    return (x01 - mean) / std


def train_toyclip(cfg: ToyTrainConfig, images: np.ndarray, captions: list[str], log=print):
    import open_clip

    torch.manual_seed(cfg.seed + 1)
    model = models.build_toyclip().to(cfg.device)
    tok = open_clip.get_tokenizer(models.register_toyclip_config())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=0.05)
    rng = np.random.default_rng(cfg.seed + 1)
    losses = []
    bar = tqdm(range(cfg.clip_steps), desc="toy-CLIP", dynamic_ncols=True)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.clip_steps, cfg.clip_lr)
        idx = rng.integers(len(images), size=cfg.clip_batch)
        x = clip_preprocess(to_tensor(images[idx]).to(cfg.device))
        caps = [captions[i] for i in idx]
        t = tok(caps).to(cfg.device)
        img_f, txt_f, scale = _unpack(model(x, t))
        logits = scale * img_f @ txt_f.T
        # captions that are identical are all positives: soft targets over equal captions
        same = torch.tensor([[a == b for b in caps] for a in caps], dtype=torch.float32, device=cfg.device)
        tgt = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-tgt * logits.log_softmax(1), 1).mean() + torch.sum(-tgt * logits.T.log_softmax(1), 1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    return model, losses


def _unpack(out):
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"]
    return out[0], out[1], out[2]


def train_vae(cfg: ToyTrainConfig, images: np.ndarray, log=print):
    torch.manual_seed(cfg.seed + 2)
    vae = models.build_vae().to(cfg.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed + 2)
    losses = []
    bar = tqdm(range(cfg.vae_steps), desc="VAE", dynamic_ncols=True)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.vae_steps, cfg.vae_lr)
        idx = rng.integers(len(images), size=cfg.vae_batch)
        x = to_tensor(images[idx]).to(cfg.device) * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    vae.eval()
    return vae, losses


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, device: str, batch: int = 512) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch):
        x = to_tensor(images[i : i + batch]).to(device) * 2 - 1
        out.append(vae.encode(x).latent_dist.mean.cpu())
    return torch.cat(out)


def train_unet(cfg: ToyTrainConfig, latents: torch.Tensor, captions: list[str], tokenizer, threads_file: Path | None = None):
    """Train UNet + text encoder on VAE latents; returns EMA copies. threads_file, if present, sets torch threads live."""
    torch.manual_seed(cfg.seed + 3)
    unet = models.build_unet().to(cfg.device)
    text = models.build_text_encoder().to(cfg.device)
    sched = models.build_scheduler()
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text).eval()
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    rng = np.random.default_rng(cfg.seed + 3)
    ids_all = tokenizer(captions, padding="max_length", max_length=models.CONTEXT_LENGTH, truncation=True, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=models.CONTEXT_LENGTH, return_tensors="pt").input_ids
    acp = sched.alphas_cumprod.to(cfg.device)
    losses = []
    bar = tqdm(range(cfg.unet_steps), desc="UNet", dynamic_ncols=True)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.unet_steps, cfg.unet_lr, warmup=200)
        idx = rng.integers(len(latents), size=cfg.unet_batch)
        z0 = latents[idx].to(cfg.device)
        ids = ids_all[idx].clone()
        drop = torch.from_numpy(rng.random(cfg.unet_batch) < cfg.cfg_dropout)
        ids[drop] = empty
        eps = torch.randn_like(z0)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.unet_batch,), device=cfg.device)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        enc = text(ids.to(cfg.device))[0]
        loss = F.mse_loss(unet(zt, t, enc).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - d)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if threads_file is not None and step % 100 == 0 and threads_file.exists():
            torch.set_num_threads(int(threads_file.read_text().strip() or 1))
    return ema_unet, ema_text, sched, losses


def save_pipeline(out: Path, vae, unet, text, sched, tokenizer_dir: Path) -> Path:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir), unet=unet,
        scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to("cpu", torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def save_toyclip(out_dir: Path, model) -> None:
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out_dir / "toyclip.safetensors"), metadata={"arch": models.TOYCLIP_NAME})
    models.write_toyclip_config(out_dir / "toyclip.json")


def train_all(cfg: ToyTrainConfig, out_dir: str | Path, stages=("clip", "vae", "unet")) -> dict:
    """Rebuild the toy models into out_dir. Returns a dict of training facts for the model card."""
    from transformers import CLIPTokenizer

    from .tokenizer import write_clip_tokenizer_files

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    facts: dict = {"config": asdict(cfg), "torch": torch.__version__}
    t0 = time.time()
    images, shapes, colors, caps = world.make_dataset(cfg.n_images, seed=cfg.seed, size=models.IMAGE_SIZE)
    facts["data_seconds"] = round(time.time() - t0, 1)
    tok_dir = write_clip_tokenizer_files(out / "_tokenizer", models.CONTEXT_LENGTH)
    if "clip" in stages:
        t0 = time.time()
        clip, l = train_toyclip(cfg, images, caps)
        save_toyclip(out, clip)
        facts["clip_seconds"], facts["clip_final_loss"] = round(time.time() - t0, 1), float(np.mean(l[-50:]))
    if "vae" in stages or "unet" in stages:
        vae_path = out / "_vae"
        if "vae" in stages:
            t0 = time.time()
            vae, l = train_vae(cfg, images)
            lat = encode_latents(vae, images[:4096], cfg.device)
            vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
            vae.save_pretrained(vae_path)
            facts["vae_seconds"], facts["vae_final_loss"] = round(time.time() - t0, 1), float(np.mean(l[-50:]))
            facts["vae_scaling_factor"] = vae.config.scaling_factor
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(vae_path).to(cfg.device)
    if "unet" in stages:
        t0 = time.time()
        lat = encode_latents(vae, images, cfg.device) * vae.config.scaling_factor
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        unet, text, sched, l = train_unet(cfg, lat, caps, tokenizer, threads_file=out / "threads")
        save_pipeline(out / "pipeline", vae, unet, text, sched, tok_dir)
        facts["unet_seconds"], facts["unet_final_loss"] = round(time.time() - t0, 1), float(np.mean(l[-200:]))
    prev = out / "train_facts.json"
    old = json.loads(prev.read_text()) if prev.exists() else {}
    old.update(facts)
    prev.write_text(json.dumps(old, indent=2))
    return old
