"""Losses of the unlearning objectives (pure torch on UNet outputs; UNets passed as callables)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_GUIDANCE_W = 7.5


def add_noise(z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = alphas_cumprod.to(z0.device)[t].view(-1, *([1] * (z0.dim() - 1))).to(z0.dtype)
    return a.sqrt() * z0 + (1 - a).sqrt() * eps


def forget_gradient_loss(e_cond: torch.Tensor, e_uncond: torch.Tensor, eps: torch.Tensor, w: float = DEFAULT_GUIDANCE_W,
                         reduction: str = "mean") -> torch.Tensor:
    """L_g = -||eps - ((1+w) eps(z_t|c) - w eps(z_t|empty))||^2: its gradient points towards forgetting."""
    guided = (1 + w) * e_cond.float() - w * e_uncond.float()
    return -F.mse_loss(guided, eps.float(), reduction=reduction)


def remap_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||eps_theta(z_t|c_forget) - sg[eps_base(z_t|c_anchor)]||^2."""
    return F.mse_loss(pred.float(), target.detach().float())


def esd_target(e_uncond: torch.Tensor, e_cond: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """ESD negative-guidance target eps(z|empty) - eta (eps(z|c) - eps(z|empty))."""
    return e_uncond - eta * (e_cond - e_uncond)
