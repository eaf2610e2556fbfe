"""SEMU's robust mode (``--robust``): adversarial training against whole-prompt-embedding attacks.

The inner loop is the ``embedding`` attack of ``semu-attack`` run against the model being trained: a few text
conditionings (every position, continuous values; each starts from a forget prompt's) are moved by Adam towards a
lower denoising loss of the classifier-free-guided prediction on the concept's own images, i.e. towards conditionings under which the erased model draws the
concept again. They are refreshed every ``every`` training steps by ``inner`` attack steps and warm-started; every
``restart`` refreshes one of them (in turn) goes back to its forget prompt's conditioning, so the adversary holds
both long trajectories and fresh ones from the concept prompt, where a real attack starts. The outer loop adds one term to the
method's loss: under those conditionings too, the prediction on the concept's noised images is remapped to the base
model's anchor prediction (the same target as the plain remap term). Only the method's own parameters (SEMU's R
matrices) train; the retain term and the retain subspace keep everything else, exactly as without ``--robust``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import objectives as O
from .trainer import unet_eps


@dataclass
class RobustConfig:
    every: int = 5
    inner: int = 5
    n: int = 4
    lr: float = 1e-2
    weight: float = 1.0
    restart: int = 2  # every `restart` refreshes one conditioning (in turn) goes back to its start (0: never)
    guidance: float = 5.0  # classifier-free guidance the inner attack fits (the model's sampling guidance)
    seed: int = 0


class EmbeddingAdversary:
    """Adversarial conditionings for the outer loop of :func:`~semu_diffusion.trainer.train` (``adversary=``)."""

    def __init__(self, unet, latents: torch.Tensor, acp: torch.Tensor, starts: torch.Tensor, uncond: torch.Tensor,
                 cfg: RobustConfig, batch_size: int, device, autocast: Callable):
        self.unet, self.latents, self.acp, self.cfg = unet, latents, acp, cfg
        self.B, self.device, self.autocast = batch_size, device, autocast
        self.starts = starts.detach().float().to(device)
        self.cond = self.starts.clone().requires_grad_(True)  # (n, L, D)
        self.uncond = uncond.detach().to(device)
        self.start_norm = float(self.cond.detach().norm())
        self.opt = torch.optim.Adam([self.cond], lr=cfg.lr)
        self.gen = torch.Generator("cpu").manual_seed(cfg.seed + 505)
        self.refreshed_at = -1
        self.restarts = 0
        self.history: list[dict] = []

    def refresh(self, step: int) -> None:
        """``inner`` attack steps: lower the current model's denoising loss on concept latents under the conditionings."""
        n, B, losses = len(self.cond), min(self.B * 2, max(2, len(self.latents))), []
        k = len(self.history)
        if self.cfg.restart and k and k % self.cfg.restart == 0:  # restart one trajectory from its forget prompt
            j = (k // self.cfg.restart - 1) % n
            with torch.no_grad():
                self.cond[j] = self.starts[j]
            for buf in self.opt.state.get(self.cond, {}).values():
                if torch.is_tensor(buf) and buf.dim() == self.cond.dim():
                    buf[j] = 0  # and its Adam moments
            self.restarts += 1
        for _ in range(self.cfg.inner):
            idx = torch.randint(0, len(self.latents), (B,), generator=self.gen)
            t = torch.randint(0, len(self.acp), (B,), generator=self.gen).to(self.device)
            eps = torch.randn((B, *self.latents.shape[1:]), generator=self.gen).to(self.device)
            j = torch.randint(0, n, (B,), generator=self.gen).to(self.device)
            zt = O.add_noise(self.latents[idx].to(self.device), eps, t, self.acp)
            with self.autocast():
                with torch.no_grad():
                    eu = unet_eps(self.unet, zt, t, {"hidden": self.uncond.expand(B, -1, -1)}).float()
                ec = unet_eps(self.unet, zt, t, {"hidden": self.cond[j]}).float()
            loss = F.mse_loss(eu + self.cfg.guidance * (ec - eu), eps.float())  # the guided prediction, as the attack
            (g,) = torch.autograd.grad(loss, [self.cond])
            self.cond.grad = g
            self.opt.step()
            self.cond.grad = None
            losses.append(float(loss.detach()))
        self.history.append({"step": step, "attack_loss_first": losses[0], "attack_loss_last": losses[-1],
                             "norm_ratio": float(self.cond.detach().norm()) / max(self.start_norm, 1e-12)})
        self.refreshed_at = step

    def loss(self, step: int, zt: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The adversarial remap term for one micro-step's forget samples (refreshing the adversary when due)."""
        if step % self.cfg.every == 0 and self.refreshed_at != step:
            self.refresh(step)
        j = (torch.arange(len(zt)) + step) % len(self.cond)
        with self.autocast():
            pred = unet_eps(self.unet, zt, t, {"hidden": self.cond.detach()[j.to(self.cond.device)]})
        return self.cfg.weight * O.remap_loss(pred, target)

    def summary(self) -> dict:
        h = self.history
        return {"refreshes": len(h), "inner_steps": len(h) * self.cfg.inner, "restarts": self.restarts,
                "attack_loss_first": h[0]["attack_loss_first"] if h else None,
                "attack_loss_last": h[-1]["attack_loss_last"] if h else None}
