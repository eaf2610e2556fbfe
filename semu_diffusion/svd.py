"""Gradient subspaces for SEMU: orthogonal projection, thin SVD and energy-based rank selection.

Pure torch. Layers of equal gradient shape are decomposed in one batched SVD call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Subspace:
    """Leading singular subspace of a (flattened) forget gradient: G ~ U diag(S) V^T."""

    U: torch.Tensor  # (out, r)
    V: torch.Tensor  # (in_flat, r)
    S: torch.Tensor  # (r,) kept singular values
    rank: int
    energy: float  # share of sum(s^2) captured by the kept components


def project_orthogonal(G: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Remove from G its component along W: G - (<G,W> / ||W||^2) W (Frobenius inner product)."""
    g, w = G.double(), W.double()
    denom = (w * w).sum()
    if denom == 0:
        return G.clone()
    return (g - (g * w).sum() / denom * w).to(G.dtype)


def select_rank(S: torch.Tensor, tau: float, r_min: int = 1, r_max: int | None = None) -> int:
    """Number of leading components whose cumulative energy sum(s_i^2)/sum(s^2) stays <= tau, clamped.

    r_min >= 1 by default so a layer is never silently frozen.
    """
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    e = S.double() ** 2
    total = e.sum()
    if total <= 0:
        r = 0
    else:
        cum = torch.cumsum(e, 0) / total
        r = int((cum <= tau + 1e-12).sum().item())
    hi = len(S) if r_max is None else min(r_max, len(S))
    return int(max(min(r, hi), min(r_min, len(S))))


def flatten_weight(t: torch.Tensor) -> torch.Tensor:
    """(out, in, kh, kw) -> (out, in*kh*kw); 2-D unchanged."""
    return t.reshape(t.shape[0], -1)


def gradient_subspaces(grads: dict[str, torch.Tensor], tau: float = 0.95, r_min: int = 1, r_max: int | None = None,
                       weights: dict[str, torch.Tensor] | None = None, device: str | torch.device | None = None
                       ) -> dict[str, Subspace]:
    """SVD of every forget gradient (flattened to 2-D), batched by shape, in float32.

    ``weights``: if given, each G is first projected orthogonally to its W.
    """
    groups: dict[tuple, list[str]] = {}
    for name, g in grads.items():
        groups.setdefault(tuple(flatten_weight(g).shape), []).append(name)
    out: dict[str, Subspace] = {}
    for shape, names in groups.items():
        mats = []
        for n in names:
            g = grads[n]
            if weights is not None:
                g = project_orthogonal(g.float(), weights[n].float().to(g.device))
            mats.append(flatten_weight(g).float().to(device or g.device))
        batch = torch.stack(mats)
        U, S, Vh = torch.linalg.svd(batch, full_matrices=False)
        for i, n in enumerate(names):
            r = select_rank(S[i], tau, r_min, r_max)
            e = S[i].double() ** 2
            energy = float(e[:r].sum() / e.sum()) if e.sum() > 0 else 0.0
            out[n] = Subspace(U=U[i, :, :r].contiguous(), V=Vh[i, :r, :].T.contiguous(), S=S[i, :r].clone(), rank=r,
                              energy=energy)
    return out


def per_channel_subspaces(G: torch.Tensor, tau: float = 0.95, r_min: int = 1, r_max: int | None = None
                          ) -> list[Subspace]:
    """Reference-code conv mode: one SVD per input channel of a conv gradient (out, in, kh, kw).

    Channel c's gradient slice G[:, c] is (out, kh*kw).
    """
    if G.dim() != 4:
        raise ValueError("per-channel subspaces need a 4-D conv gradient")
    mats = G.float().permute(1, 0, 2, 3).reshape(G.shape[1], G.shape[0], -1)  # (in, out, kh*kw)
    U, S, Vh = torch.linalg.svd(mats, full_matrices=False)
    res = []
    for c in range(G.shape[1]):
        r = select_rank(S[c], tau, r_min, r_max)
        e = S[c].double() ** 2
        energy = float(e[:r].sum() / e.sum()) if e.sum() > 0 else 0.0
        res.append(Subspace(U=U[c, :, :r].contiguous(), V=Vh[c, :r, :].T.contiguous(), S=S[c, :r].clone(), rank=r,
                            energy=energy))
    return res
