"""SEMU: train only r x r matrices R inside W = W0 + U_r R V_r^T, U_r/V_r from the forget-gradient SVD."""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import layers as L
from ..svd import RetainBasis, gradient_subspaces, per_channel_subspaces, project_orthogonal, remove_directions, retain_directions
from . import register
from .base import Delta, Method


@register("semu")
class SEMU(Method):
    needs_gradient = True

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self.retain_kept: dict[str, float] = {}  # per layer: share of the forget gradient's energy the retain
        # directions left (recorded by retain_clean, moved into info by add_retain_info)
        self.retain_layers: dict[str, dict] = {}  # per layer (activation source): estimator, d, k, energy reached

    @property
    def needs_retain_gradient(self) -> bool:
        return self.config.retain_energy > 0

    def setup(self, unet: nn.Module, targets: list[str], grads: dict[str, torch.Tensor] | None, loss_fn=None,
              retain_grads: dict[str, torch.Tensor] | None = None, consume: bool = False) -> list[nn.Parameter]:
        c = self.config
        if grads is None:
            raise ValueError("SEMU needs the forget gradient")
        take = grads.pop if consume else grads.__getitem__  # consume: free each gradient once it is decomposed
        weights = {n: unet.get_submodule(n).weight.detach() for n in targets} if c.project else None
        if self.needs_retain_gradient:
            cleaned = {}
            for n in targets:
                cleaned[n] = self.retain_clean(n, [take(n)], None if weights is None else weights[n], retain_grads)[0]
            grads, take, consume = cleaned, cleaned.pop, True
            weights = None  # projected already
        dev = next(iter(grads.values())).device
        subs: dict = {}
        if c.conv_mode == "per-channel":
            conv = [n for n in targets if grads[n].dim() == 4]
            for n in conv:
                g = take(n).float()
                if weights is not None:
                    g = project_orthogonal(g, weights[n].float())
                subs[n] = per_channel_subspaces(g, c.tau, c.r_min, c.r_max)
            rest = {n: take(n) for n in targets if n not in subs}
        else:
            rest = {n: take(n) for n in targets}
        subs.update(gradient_subspaces(rest, c.tau, c.r_min, c.r_max, weights=weights, device=dev, consume=consume))
        return self.inject_subspaces(unet, targets, subs)

    def inject_subspaces(self, unet: nn.Module, targets: list[str], subs: dict, **extra_info) -> list[nn.Parameter]:
        """Wrap every target layer of nonzero rank in its subspace (``subs``: name -> Subspace, or a list of them per
        output channel) and record ranks and energies in ``info`` (``extra_info`` after ``frozen_layers``).
        Returns the trainable parameters."""
        def rank(s) -> int:
            return sum(x.rank for x in s) if isinstance(s, list) else s.rank

        frozen = [n for n in targets if rank(subs[n]) == 0]  # r = 0 (r_min = 0): the layer stays as it is
        self.layers = L.inject(unet, {n: subs[n] for n in targets if n not in frozen})
        if not self.layers:
            raise ValueError("every target layer got rank 0: raise --tau or --r-min")
        params = [p for layer in self.layers.values() for p in layer.parameters() if p.requires_grad]
        self.info = {
            "frozen_layers": frozen,
            **extra_info,
            "ranks": {n: int(layer.rank) for n, layer in self.layers.items()},
            "energy": {n: float(subs[n].energy) for n in self.layers if not isinstance(subs[n], list)},
            "trainable_params": int(sum(p.numel() for p in params)),
        }
        self.add_retain_info()
        return params

    def add_retain_info(self) -> None:
        """Record the retain-aware subspace (share of the forget gradient's energy it kept) in ``info``."""
        k, self.retain_kept = self.retain_kept, {}
        layers, self.retain_layers = self.retain_layers, {}
        if self.needs_retain_gradient:
            c = self.config
            self.info["retain_subspace"] = {"energy": c.retain_energy, "side": c.retain_side,
                                            "forget_energy_kept_mean": float(sum(k.values()) / max(1, len(k)))}
            if layers:  # activation source: what each layer's basis holds, as measured (sketch: a lower bound)
                e = [r["energy"] for r in layers.values()]
                self.info["retain_subspace"].update({
                    "energy_reached_min": min(e), "energy_reached_mean": sum(e) / len(e),
                    "layers_below_target": sum(not r["reached"] for r in layers.values()),
                    "sketched_layers": sum(r["estimator"] == "sketch" for r in layers.values()),
                    "layers": layers})

    def retain_clean(self, name: str, gs: list[torch.Tensor], w: torch.Tensor | None, retain_grads
                     ) -> list[torch.Tensor]:
        """One layer's forget gradients (one per concept): each projected orthogonally to ``w`` (if given), then
        the retain gradient's leading directions (one SVD per layer) removed."""
        c = self.config
        if not retain_grads:
            raise ValueError("retain_energy > 0 needs the retain gradient (a retain set): pass retain prompts")
        rg = retain_grads[name]
        if isinstance(rg, RetainBasis):  # activation source: the input directions, already chosen
            U, V = None, rg.V.to(gs[0].device)
            self.retain_layers[name] = rg.record()
        else:
            U, V = retain_directions(rg.to(gs[0].device), c.retain_energy, c.retain_side)
        out, kept = [], []
        for g in gs:
            g = g.float()
            if w is not None:
                g = project_orthogonal(g, w.float().to(g.device))
            out.append(remove_directions(g, U, V))
            kept.append(float(out[-1].pow(2).sum() / g.pow(2).sum().clamp_min(1e-30)))
        self.retain_kept[name] = sum(kept) / len(kept)
        return out

    @torch.no_grad()
    def export(self, unet: nn.Module) -> Delta:
        d = Delta(format="lora")
        for n, layer in self.layers.items():
            if isinstance(layer, L.SEMUConv2dPerChannel):
                d.format = "mixed"
                d.dense[n] = layer.delta_weight().detach().float().cpu().contiguous()
                continue
            B, A = layer.factors()
            w = layer.base.weight
            if w.dim() == 4:
                A = A.reshape(layer.rank, *w.shape[1:])
                B = B[:, :, None, None]
            d.lora[n] = (B.detach().float().cpu().contiguous(), A.detach().float().cpu().contiguous())
            d.ranks[n] = layer.rank
        if d.format == "mixed" and not d.lora:
            d.format = "dense"
        return d

    def set_scale(self, s: float) -> None:
        for layer in self.layers.values():
            layer.scale = s

    def restore(self, unet: nn.Module) -> None:
        L.eject(unet, self.layers, merge=False)
        self.layers = {}
