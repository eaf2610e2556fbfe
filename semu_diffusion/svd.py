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
    return _rank_from_energy(S, (S.double() ** 2).sum(), tau, r_min, r_max)


def flatten_weight(t: torch.Tensor) -> torch.Tensor:
    """(out, in, kh, kw) -> (out, in*kh*kw); 2-D unchanged."""
    return t.reshape(t.shape[0], -1)


def gradient_subspaces(grads: dict[str, torch.Tensor], tau: float = 0.95, r_min: int = 1, r_max: int | None = None,
                       weights: dict[str, torch.Tensor] | None = None, device: str | torch.device | None = None,
                       solver: str = "auto", seed: int = 0, consume: bool = False) -> dict[str, Subspace]:
    """SVD of every forget gradient (flattened to 2-D) in float32, layers of equal shape in one batched call.

    ``weights``: if given, each G is first projected orthogonally to its W.
    ``solver``: "full" (exact thin SVD), "lowrank" (randomized top-(r_max + 8) SVD with power iterations; the total
    energy is the exact ||G||_F^2, so rank selection is unchanged whenever r <= r_max), or "auto" (lowrank when
    r_max is set and small against the matrix size).
    ``consume``: pop each gradient from ``grads`` once it is copied into its group's batch, so that (with no other
    reference to it) the peak memory is the gradients plus one layer, not plus a copy of every group.
    """
    if solver not in ("auto", "full", "lowrank"):
        raise ValueError("solver must be auto, full or lowrank")
    groups: dict[tuple, list[str]] = {}
    for name, g in grads.items():
        groups.setdefault(tuple(flatten_weight(g).shape), []).append(name)
    out: dict[str, Subspace] = {}
    for shape, names in groups.items():
        batch = torch.empty((len(names), *shape), dtype=torch.float32, device=device or grads[names[0]].device)
        for i, n in enumerate(names):
            g = grads.pop(n) if consume else grads[n]
            if weights is not None:
                g = project_orthogonal(g.float(), weights[n].float().to(g.device))
            batch[i] = flatten_weight(g)
            del g
        q = (r_max or 0) + 8
        use_low = solver == "lowrank" or (solver == "auto" and r_max is not None and q * 4 <= min(shape))
        if use_low:
            devs = [batch.device] if batch.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devs):  # seeded, without touching the caller's RNG
                torch.manual_seed(seed)
                U, S, V = torch.svd_lowrank(batch, q=min(q, min(shape)), niter=4)
            total = torch.stack([b.pow(2).sum() for b in batch]).double()  # one layer's temporary at a time
        else:
            U, S, Vh = torch.linalg.svd(batch, full_matrices=False)
            V = Vh.transpose(-1, -2)
            total = (S.double() ** 2).sum(-1)
        for i, n in enumerate(names):
            r = _rank_from_energy(S[i], total[i], tau, r_min, r_max)
            e = S[i, :r].double() ** 2
            energy = float(e.sum() / total[i]) if total[i] > 0 else 0.0
            out[n] = Subspace(U=U[i, :, :r].contiguous(), V=V[i, :, :r].contiguous(), S=S[i, :r].clone(), rank=r,
                              energy=energy)
    return out


def retain_directions(G: torch.Tensor, energy: float, side: str = "in", max_full: int = 1024
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Leading singular directions of a (retain) gradient that hold ``energy`` of its sum(s^2): the output-side U
    (``side`` "out" or "both") and the flattened input-side V ("in" or "both"); the other is None. Matrices with
    both sides above ``max_full`` use a randomized SVD of the top max_full/2 directions."""
    if side not in ("in", "out", "both"):
        raise ValueError("side must be in, out or both")
    g = flatten_weight(G).float()
    total = g.double().pow(2).sum()
    if min(g.shape) > max_full:  # SD-scale layers: randomized top-q SVD (the total energy stays exact)
        with torch.random.fork_rng(devices=[g.device] if g.device.type == "cuda" else []):
            torch.manual_seed(0)
            U, S, V = torch.svd_lowrank(g, q=max_full // 2, niter=4)
    else:
        U, S, Vh = torch.linalg.svd(g, full_matrices=False)
        V = Vh.T
    if total <= 0:
        k = 0
    else:  # the fewest leading directions holding >= energy of the total (all computed ones at most)
        k = min(len(S), int((torch.cumsum(S.double() ** 2, 0) / total < energy - 1e-12).sum().item()) + 1)
    return (U[:, :k] if side in ("out", "both") else None), (V[:, :k] if side in ("in", "both") else None)


def remove_directions(G: torch.Tensor, U: torch.Tensor | None = None, V: torch.Tensor | None = None) -> torch.Tensor:
    """(I - U U^T) G (I - V V^T) on the flattened G (U, V orthonormal columns; None = that side untouched)."""
    g = flatten_weight(G).float()
    if U is not None:
        g = g - U @ (U.T @ g)
    if V is not None:
        g = g - (g @ V) @ V.T
    return g.reshape(G.shape).to(G.dtype)


def _rank_from_energy(S: torch.Tensor, total: torch.Tensor, tau: float, r_min: int, r_max: int | None) -> int:
    """select_rank with an externally known total energy (the leading S may be a truncated spectrum)."""
    if total <= 0:
        r = 0
    else:
        cum = torch.cumsum(S.double() ** 2, 0) / total
        r = int((cum <= tau + 1e-12).sum().item())
    hi = len(S) if r_max is None else min(r_max, len(S))
    return int(max(min(r, hi), min(r_min, len(S))))


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
