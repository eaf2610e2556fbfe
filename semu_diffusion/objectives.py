"""Losses of the unlearning objectives (pure torch on UNet outputs; UNets passed as callables)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_GUIDANCE_W = 7.5


def add_noise(z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = alphas_cumprod.to(z0.device)[t].view(-1, *([1] * (z0.dim() - 1))).to(z0.dtype)
    return a.sqrt() * z0 + (1 - a).sqrt() * eps


def guided_score(unet, zt, t, cond, uncond, w: float = DEFAULT_GUIDANCE_W) -> torch.Tensor:
    """(1+w) eps(z_t|c) - w eps(z_t|empty), one UNet call on the doubled batch."""
    e = unet(torch.cat([zt, zt]), torch.cat([t, t]), torch.cat([cond, uncond])).sample
    ec, eu = e.chunk(2)
    return (1 + w) * ec - w * eu


def forget_gradient_loss(unet, zt, t, eps, cond, uncond, w: float = DEFAULT_GUIDANCE_W) -> torch.Tensor:
    """L_g = -||eps - guided score||^2 (mean over the batch): its gradient points towards forgetting."""
    return -F.mse_loss(guided_score(unet, zt, t, cond, uncond, w).float(), eps.float(), reduction="mean")


def remap_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||eps_theta(z_t|c_forget) - sg[eps_base(z_t|c_anchor)]||^2."""
    return F.mse_loss(pred.float(), target.detach().float())


def esd_target(e_uncond: torch.Tensor, e_cond: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """ESD negative-guidance target eps(z|empty) - eta (eps(z|c) - eps(z|empty))."""
    return e_uncond - eta * (e_cond - e_uncond)


def retain_loss(pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), eps.float())
