"""SEMU layers: W = W0 + U_r R V_r^T with only R (r x r) trainable. Pure torch.

Layer contract (as in peft): ``delta_weight()``, ``merge()``, ``unmerge()``, ``forward()``.
The wrapped base layer is kept as ``self.base`` and never modified except by ``merge``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .svd import Subspace


class SEMULayer(nn.Module):
    """Common part: frozen base module, frozen U (out, r) and V (in_flat, r) buffers, trainable R (r, r)."""

    def __init__(self, base: nn.Module, sub: Subspace):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        w = base.weight
        self.register_buffer("U", sub.U.detach().to(w.device, torch.float32).clone())
        self.register_buffer("V", sub.V.detach().to(w.device, torch.float32).clone())
        self.R = nn.Parameter(torch.zeros(sub.rank, sub.rank, device=w.device, dtype=torch.float32))
        self.merged = False
        self.scale = 1.0

    @property
    def rank(self) -> int:
        return self.R.shape[0]

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """LoRA factors (B, A) with B @ A = U R V^T: B = U R (out, r), A = V^T (r, in_flat)."""
        return self.U @ self.R, self.V.T

    def delta_weight(self) -> torch.Tensor:
        B, A = self.factors()
        return (self.scale * (B @ A)).reshape(self.base.weight.shape)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            w = self.base.weight
            w.copy_((w.float() + self.delta_weight()).to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            w = self.base.weight
            w.copy_((w.float() - self.delta_weight()).to(w.dtype))
            self.merged = False


class SEMULinear(SEMULayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        h = x.to(self.V.dtype) @ self.V  # (..., r)
        h = h @ (self.R.T if self.scale == 1.0 else self.R.T * self.scale) @ self.U.T
        return y + h.to(y.dtype)


class SEMUConv2d(SEMULayer):
    """'flat' conv mode: one SVD of the (out, in*kh*kw) gradient; the update is a LoRA conv pair."""

    def __init__(self, base: nn.Module, sub: Subspace):
        super().__init__(base, sub)
        # V^T as an (r, in, kh, kw) kernel, made once (not per forward); follows .to(), not saved in state_dict
        self.register_buffer("A", self.V.T.reshape(self.rank, *base.weight.shape[1:]).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        b, A = self.base, self.A
        h = F.conv2d(x.to(A.dtype), A, None, b.stride, b.padding, b.dilation, b.groups)
        B = self.U @ self.R if self.scale == 1.0 else self.U @ self.R * self.scale
        return y + F.conv2d(h, B[:, :, None, None]).to(y.dtype)


class SEMUConv2dPerChannel(nn.Module):
    """Reference-code conv mode: per input channel c, dW[:, c] = U_c R_c V_c^T. Not LoRA-shaped (dense delta)."""

    def __init__(self, base: nn.Conv2d, subs: list[Subspace]):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        dev = base.weight.device
        self.Us = nn.ParameterList([nn.Parameter(s.U.to(dev, torch.float32).clone(), requires_grad=False) for s in subs])
        self.Vs = nn.ParameterList([nn.Parameter(s.V.to(dev, torch.float32).clone(), requires_grad=False) for s in subs])
        self.Rs = nn.ParameterList([nn.Parameter(torch.zeros(s.rank, s.rank, device=dev)) for s in subs])
        self.merged = False
        self.scale = 1.0

    @property
    def rank(self) -> int:
        return sum(r.shape[0] for r in self.Rs)

    def trainable_numel(self) -> int:
        return sum(r.numel() for r in self.Rs)

    def delta_weight(self) -> torch.Tensor:
        out, cin, kh, kw = self.base.weight.shape
        cols = [(U @ R @ V.T).reshape(out, 1, kh, kw) for U, R, V in zip(self.Us, self.Rs, self.Vs)]
        return self.scale * torch.cat(cols, 1)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight.copy_((self.base.weight.float() + self.delta_weight()).to(self.base.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight.copy_((self.base.weight.float() - self.delta_weight()).to(self.base.weight.dtype))
            self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        if self.merged:
            return b(x)
        w = b.weight.float() + self.delta_weight()
        return F.conv2d(x, w.to(x.dtype), b.bias, b.stride, b.padding, b.dilation, b.groups)


SEMU_LAYER_TYPES = (SEMULayer, SEMUConv2dPerChannel)


def wrap(base: nn.Module, sub: Subspace | list[Subspace]) -> nn.Module:
    """Return the SEMU layer for a Linear / Conv2d base module."""
    if isinstance(sub, list):
        if not isinstance(base, nn.Conv2d):
            raise TypeError("per-channel subspaces apply to Conv2d only")
        return SEMUConv2dPerChannel(base, sub)
    if isinstance(base, nn.Linear):
        return SEMULinear(base, sub)
    if isinstance(base, nn.Conv2d):
        if base.groups != 1:
            raise TypeError("grouped convolutions are not supported")
        return SEMUConv2d(base, sub)
    raise TypeError(f"SEMU supports nn.Linear and nn.Conv2d, not {type(base).__name__}")


def get_module(root: nn.Module, name: str) -> nn.Module:
    return root.get_submodule(name)


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def inject(root: nn.Module, subspaces: dict[str, Subspace | list[Subspace]]) -> dict[str, nn.Module]:
    """Replace each named module of ``root`` by its SEMU layer, in place on ``root``. Returns the new layers."""
    layers = {}
    for name, sub in subspaces.items():
        layer = wrap(get_module(root, name), sub)
        set_module(root, name, layer)
        layers[name] = layer
    return layers


def eject(root: nn.Module, layers: dict[str, nn.Module], merge: bool = False) -> None:
    """Put the base modules back (merging the update into them first if ``merge``)."""
    for name, layer in layers.items():
        if merge:
            layer.merge()
        set_module(root, name, layer.base)
