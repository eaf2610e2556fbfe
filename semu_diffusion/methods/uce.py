"""UCE, the closed-form cross-attention edit (Gandikota et al., "Unified Concept Editing in Diffusion Models",
WACV 2024), written from the paper's equations.

For every cross-attention key and value projection W (``attn2.to_k``, ``attn2.to_v``) it solves

    min_W  sum_i ||W c_i - W0 c*_i||^2  +  lam_p * sum_j ||W p_j - W0 p_j||^2  +  lam * ||W - W0||_F^2

over the text-encoder outputs c_i of the erased prompts (every token position), c*_i those of their anchor
prompts aligned so that the concept's last token and everything after it map onto the anchor's, and p_j those of
the preserved prompts. Its solution is
    W = (sum_i W0 c*_i c_i^T + lam_p sum_j W0 p_j p_j^T + lam W0) (sum_i c_i c_i^T + lam_p sum_j p_j p_j^T + lam I)^-1.
No gradient, no training: one linear solve per layer. The update is exported as dense deltas.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import register
from .base import Delta, Method

UCE_TARGETS = r"attn2\.to_(k|v)$"


@register("uce")
class UCE(Method):
    needs_gradient = False
    closed_form = True
    objective = "remap"

    def __init__(self, config=None, preserve_scale: float = 1.0, lamb: float = 0.1, **options):
        super().__init__(config, **options)
        if not preserve_scale >= 0 or not lamb > 0:
            raise ValueError("uce: preserve_scale must be >= 0 and lamb > 0")
        self.preserve_scale, self.lamb = float(preserve_scale), float(lamb)
        self.delta: Delta | None = None

    @staticmethod
    def select(names: list[str], unet: nn.Module) -> list[str]:
        """UCE's layers: the cross-attention key/value projections (whatever the recipe's target set)."""
        import re

        return [n for n, _ in unet.named_modules() if re.search(UCE_TARGETS, n)]

    @torch.no_grad()
    def edit(self, unet: nn.Module, names: list[str], erase: torch.Tensor, erase_last: list[int],
             anchor: torch.Tensor, anchor_last: list[int], preserve: torch.Tensor | None) -> Delta:
        """``erase``/``anchor``: (n, L, d) text-encoder outputs of paired prompts, ``*_last``: the index of each
        prompt's last word token; ``preserve``: (m, L, d) or None. Returns the dense deltas of ``names``."""
        L = erase.shape[1]
        aligned = anchor.clone()
        for i, (fe, fa) in enumerate(zip(erase_last, anchor_last)):
            k = min(L - fe, L - fa)
            aligned[i, fe:fe + k] = anchor[i, fa:fa + k]
            if fe + k < L:
                aligned[i, fe + k:] = anchor[i, -1]
        C = erase.reshape(-1, erase.shape[-1]).double()          # (n*L, d)
        Cs = aligned.reshape(-1, aligned.shape[-1]).double()
        d = C.shape[1]
        mat2 = C.T @ C + self.lamb * torch.eye(d, dtype=torch.float64)
        cross = Cs.T @ C                                            # W0 (sum c* c^T)
        if preserve is not None and self.preserve_scale > 0:
            P = preserve.reshape(-1, preserve.shape[-1]).double()
            pp = self.preserve_scale * (P.T @ P)
            mat2 += pp
            cross = cross + pp
        inv = torch.linalg.inv(mat2)
        modules = dict(unet.named_modules())
        dense = {}
        for n in names:
            W0 = modules[n].weight.detach().double().cpu()
            W = (W0 @ cross + self.lamb * W0) @ inv
            dense[n] = (W - W0).float()
        self.info.update(layers=len(names), preserve_scale=self.preserve_scale, lamb=self.lamb,
                         erase_tokens=int(C.shape[0]), preserve_tokens=0 if preserve is None else int(preserve.numel() // d))
        self.delta = Delta(format="dense", dense=dense)
        return self.delta

    def export(self, unet: nn.Module) -> Delta:
        return self.delta

    def restore(self, unet: nn.Module) -> None:
        pass  # the UNet is never changed

    def trainable_numel(self) -> int:
        return 0 if self.delta is None else sum(d.numel() for d in self.delta.dense.values())
