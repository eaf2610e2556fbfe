"""The rival methods, trained on dense (optionally masked) weights with the same harness and objective:

- ``full``:  plain fine-tuning of the SEMU target layers (the cost upper bound).
- ``salun``: weight saliency: the top ``salun_share`` (default 50%) of |forget gradient| over all UNet
  Linear/Conv2d weights, ranked globally; masked fine-tuning with the remap objective.
- ``esd-x`` / ``esd-u``: ESD's negative-guidance target on cross-attention weights (x) or on every other
  Linear/Conv2d weight (u); with ``train_bias`` (set by the ``esd-*-paper`` presets) their biases too, as the
  official ESD code.
- ``sap``:   sharpness-aware selection: the top ``sap_share`` (default 5%) of |Hessian diagonal| of the forget
  loss over the target layers, estimated with ``sap_probes`` Hutchinson probes (Rademacher v, diag = E[v * Hv],
  averaged signed, abs after) over up to ``sap_batches`` (default 4) forget batches.

Every dense method takes the method option ``train_bias`` (default False): the bias of each chosen module that has
one is trained as well (never masked) and exported as ``b - b0``.

Their deltas are dense (``W - W0`` of every touched module, ``b - b0`` of every trained bias) and load with
``semu_diffusion.load_delta`` only.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

from . import register
from .base import Delta, Method

CROSS_ATTN = re.compile(r"\.attn2\.")


def _weights(unet: nn.Module, pred) -> list[str]:
    return [n for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and pred(n)]


class DenseMethod(Method):
    """Trains the ``weight`` of chosen modules, with an optional elementwise mask on the update, and with the
    option ``train_bias`` also their biases (unmasked)."""

    lr_scale: float = 1.0

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        tb = self.options.get("train_bias", False)
        if not isinstance(tb, bool):
            raise ValueError(f"method option train_bias must be true or false, got {tb!r}")
        self.train_bias = tb

    def modules(self, unet: nn.Module, targets: list[str]) -> list[str]:
        return targets

    def masks(self, unet: nn.Module, names: list[str], grads: dict[str, torch.Tensor] | None, loss_fn=None
              ) -> dict[str, torch.Tensor] | None:
        return None

    def gradient_targets(self, unet: nn.Module, targets: list[str]) -> list[str]:
        return self.modules(unet, targets) if self.needs_gradient else []

    def setup(self, unet, targets, grads, loss_fn=None, retain_grads=None, consume=False):
        names = self.modules(unet, targets)
        self.names = names
        self.w0 = {n: unet.get_submodule(n).weight.detach().to("cpu", torch.float32, copy=True) for n in names}
        self.bias_names = [n for n in names if self.train_bias and unet.get_submodule(n).bias is not None]
        self.b0 = {n: unet.get_submodule(n).bias.detach().to("cpu", torch.float32, copy=True) for n in self.bias_names}
        mask = self.masks(unet, names, grads, loss_fn)
        self.mask = mask
        self.hooks = []
        params = []
        for n in names:
            w = unet.get_submodule(n).weight
            w.requires_grad_(True)
            params.append(w)
            if mask is not None:
                keep = mask[n].to(w.device, torch.bool)
                self.hooks.append(w.register_hook(lambda g, keep=keep: g.masked_fill(~keep, 0)))
        total = sum(p.numel() for p in params)
        chosen = int(sum(int(mask[n].sum()) for n in names)) if mask is not None else total
        bias_params = 0
        for n in self.bias_names:  # the trainer froze the UNet: unfreeze exactly the biases trained
            b = unet.get_submodule(n).bias
            b.requires_grad_(True)
            params.append(b)
            bias_params += b.numel()
        self.info = {"trainable_params": chosen + bias_params, "modules": len(names), "masked": mask is not None,
                     "train_bias": self.train_bias, "bias_modules": len(self.bias_names), "bias_params": bias_params,
                     **getattr(self, "info_extra", {})}
        return params

    @torch.no_grad()
    def export(self, unet: nn.Module) -> Delta:
        d = Delta(format="dense")
        for n in self.names:
            w = unet.get_submodule(n).weight.detach().float().cpu()
            d.dense[n] = (w - self.w0[n]).contiguous()
        for n in self.bias_names:
            b = unet.get_submodule(n).bias.detach().float().cpu()
            d.dense_bias[n] = (b - self.b0[n]).contiguous()
        return d

    @torch.no_grad()
    def restore(self, unet: nn.Module) -> None:
        for h in self.hooks:
            h.remove()
        for n in self.names:
            w = unet.get_submodule(n).weight
            w.requires_grad_(False)
            w.copy_(self.w0[n].to(w.device, w.dtype))
        for n in getattr(self, "bias_names", []):
            b = unet.get_submodule(n).bias
            b.requires_grad_(False)
            b.copy_(self.b0[n].to(b.device, b.dtype))


def top_share_mask(scores: dict[str, torch.Tensor], share: float) -> dict[str, torch.Tensor]:
    """Global top-``share`` boolean mask over all entries of all score tensors (ties kept at the threshold)."""
    if not 0 < share <= 1:
        raise ValueError("the selected share must be in (0, 1]")
    flat = torch.cat([s.reshape(-1).cpu() for s in scores.values()])
    k = max(1, int(round(share * flat.numel())))
    thr = torch.topk(flat, k, sorted=False).values.min()
    del flat
    return {n: (s.cpu() >= thr) for n, s in scores.items()}  # bool masks: 1 byte per weight


@register("full")
class Full(DenseMethod):
    needs_gradient = False


@register("salun")
class SalUn(DenseMethod):
    needs_gradient = True

    def modules(self, unet, targets):
        return _weights(unet, lambda n: True)

    def masks(self, unet, names, grads, loss_fn=None):
        share = float(self.options.get("salun_share", 0.5))
        return top_share_mask({n: grads[n].abs() for n in names}, share)


@register("esd-x")
class ESDx(DenseMethod):
    needs_gradient = False
    objective = "esd"

    def modules(self, unet, targets):
        return _weights(unet, lambda n: bool(CROSS_ATTN.search(n)))


@register("esd-u")
class ESDu(DenseMethod):
    needs_gradient = False
    objective = "esd"

    def modules(self, unet, targets):
        return _weights(unet, lambda n: not CROSS_ATTN.search(n))


@register("sap")
class SAP(DenseMethod):
    needs_gradient = False
    needs_loss_fn = True

    def masks(self, unet, names, grads, loss_fn=None):
        if loss_fn is None:
            raise ValueError("sap needs a forget-loss closure for its Hessian estimate")
        share = float(self.options.get("sap_share", 0.05))
        probes = int(self.options.get("sap_probes", 4))
        batches = max(1, min(int(self.options.get("sap_batches", 4)), probes, getattr(loss_fn, "batches", 1)))
        self.info_extra = {"sap_probes": probes, "sap_batches": batches, "sap_estimator": "signed Hutchinson mean, abs after"}
        return top_share_mask(hutchinson_diagonal(unet, names, loss_fn, probes, batches=batches), share)


def hutchinson_diagonal(unet: nn.Module, names: list[str], loss_fn, probes: int = 4, seed: int = 0, batches: int = 1
                        ) -> dict[str, torch.Tensor]:
    """|diag(H)| of the forget loss w.r.t. the named weights, by Hutchinson's estimator diag(H) = E_v[v * Hv]
    (Rademacher v). The products are averaged signed, over ``probes`` probes spread over ``batches`` forget
    batches (``loss_fn(b)`` is the loss on batch b), and the absolute value is taken at the end: the mean of
    |v * Hv| would converge to E|v * Hv|, dominated by the off-diagonal terms, not to |diag(H)|."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if probes < 1 or batches < 1:
        raise ValueError("probes and batches must be >= 1")
    ws = [unet.get_submodule(n).weight for n in names]
    req = [w.requires_grad for w in ws]
    for w in ws:
        w.requires_grad_(True)
    g = torch.Generator("cpu").manual_seed(seed)
    acc = [torch.zeros_like(w, dtype=torch.float32) for w in ws]
    per_batch = [len(range(b, probes, batches)) for b in range(batches)]
    try:
        for b, k in enumerate(per_batch):
            if k == 0:
                continue
            with sdpa_kernel(SDPBackend.MATH):  # fused attention kernels have no double backward
                grads = torch.autograd.grad(loss_fn(b), ws, create_graph=True)
                for j in range(k):
                    vs = [(torch.randint(0, 2, w.shape, generator=g) * 2 - 1).to(w.device, w.dtype) for w in ws]
                    hv = torch.autograd.grad(grads, ws, grad_outputs=vs, retain_graph=j < k - 1)
                    for a_, v, h in zip(acc, vs, hv):
                        a_ += (v * h).float() / probes
            del grads
    finally:
        for w, r in zip(ws, req):
            w.requires_grad_(r)
    return {n: a_.abs_() for n, a_ in zip(names, acc)}
