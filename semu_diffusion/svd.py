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


# ---- retain input subspace: exact moment or streamed sketch ----------------------------------------------------
@dataclass
class RetainBasis:
    """The input directions of one layer that SEMU's retain-aware subspace removes from its forget gradient.

    ``energy`` is the share of the layer's retain input energy (trace of K = sum x x^T, accumulated exactly) that
    ``V`` captures: exact for the exact moment, a guaranteed lower bound for the sketch (the Nystrom estimate
    K_hat satisfies K_hat <= K, so v^T K_hat v <= v^T K v for every direction)."""

    V: torch.Tensor  # (d, k) orthonormal columns
    energy: float  # captured share of the retain input energy (sketch: lower bound)
    target: float  # the requested share
    estimator: str  # "exact" or "sketch"
    d: int
    sketch: int | None = None  # sketch size (columns) when sketched
    passes: int = 1  # passes over the retain inputs (sketch: 2 = one power iteration)

    @property
    def k(self) -> int:
        return int(self.V.shape[1])

    def record(self) -> dict:
        return {"estimator": self.estimator, "d": self.d, "k": self.k, "energy": round(self.energy, 6),
                "reached": self.energy >= self.target - 1e-9, **({"sketch": self.sketch, "passes": self.passes} if self.sketch else {})}


def _count_for_energy(lam: torch.Tensor, total: float, energy: float) -> int:
    """The fewest leading (descending) eigenvalues holding >= energy of ``total`` (all of them if none does)."""
    if total <= 0 or len(lam) == 0:
        return 0
    cum = torch.cumsum(lam.double(), 0) / total
    return min(len(lam), int((cum < energy - 1e-12).sum().item()) + 1)


class InputMoment:
    """Streaming estimate of the leading directions of a layer's inputs x (rows, d wide).

    ``estimator`` "exact": the d x d second moment K = sum x x^T (d^2 floats), eigendecomposed at the end.
    "sketch": a randomized Nystrom sketch Y = K Omega with a fixed Gaussian test matrix Omega (d x l,
    orthonormalised), so 2 d l floats, whatever the number of rows (Tropp, Yurtsever, Udell, Cevher 2017, the
    stable fixed-rank PSD approximation); :meth:`power_pass` allows a second pass with Omega = orth(K Omega), one
    power iteration (Halko, Martinsson, Tropp 2011). The trace of K is accumulated exactly in both cases, so the energy
    share a basis captures is stated against the true total."""

    def __init__(self, d: int, estimator: str = "exact", sketch: int = 512, seed: int = 0, device=None,
                 omega: torch.Tensor | None = None):
        if estimator not in ("exact", "sketch"):
            raise ValueError("estimator must be exact or sketch")
        self.d, self.estimator, self.total = d, estimator, torch.zeros((), dtype=torch.float64, device=device)
        self.passes = 1
        if estimator == "exact":
            self.K = torch.zeros((d, d), dtype=torch.float32, device=device)
        else:
            self.l = min(int(sketch), d)
            self.omega = omega if omega is not None else sketch_matrix(d, self.l, seed, device)
            self.Y = torch.zeros((d, self.l), dtype=torch.float32, device=device)

    def power_pass(self) -> None:
        """Start a second pass over the same inputs (a sketch only): the test matrix becomes an orthonormal basis of
        the first pass's range, Omega <- orth(K Omega), and the sketch and trace start again. One such power
        iteration makes the leading directions accurate up to the sketch size itself (one pass needs oversampling,
        k well below l); the memory stays 2 d l floats."""
        if self.estimator != "sketch":
            raise ValueError("only a sketch has a second pass")
        # kept in fp16 (1.5 d l floats' worth in all): the Nystrom estimate holds for any test matrix, and the
        # rounded one is what both the sketch and the eigen-solve use, so K_hat <= K still
        self.omega = torch.linalg.qr(self.Y.double())[0].to(torch.float16)
        self.Y.zero_()
        self.total.zero_()
        self.passes += 1

    def update(self, x: torch.Tensor) -> None:
        """Add rows ``x`` (n, d) to the estimate."""
        x = x.float()
        self.total += x.double().pow(2).sum() if x.numel() < 2**26 else x.pow(2).sum(0).double().sum()
        with torch.autocast(device_type=x.device.type, enabled=False):  # fp32 sums also under bf16/fp16 autocast
            if self.estimator == "exact":
                self.K.addmm_(x.T, x)
            else:
                self.Y.addmm_(x.T, x @ self.omega.to(x.dtype))

    def basis(self, energy: float) -> RetainBasis:
        """The fewest leading directions holding ``energy`` of the retain input energy (exact), or of its sketch
        (at most the sketch size; the energy actually captured, a lower bound, is what is recorded)."""
        total = float(self.total)
        if self.estimator == "exact":
            lam, Q = torch.linalg.eigh(self.K.double())
            lam, Q = lam.flip(0).clamp_min(0), Q.flip(1)
            k = _count_for_energy(lam, total, energy)
            captured = float(lam[:k].sum() / total) if total > 0 else 0.0
            return RetainBasis(Q[:, :k].float().contiguous(), min(captured, 1.0), energy, "exact", self.d)
        lam, U = nystrom_eig(self.Y, self.omega)
        k = _count_for_energy(lam, total, energy)
        captured = float(lam[:k].sum() / total) if total > 0 else 0.0
        return RetainBasis(U[:, :k].float().contiguous(), min(captured, 1.0), energy, "sketch", self.d, self.l,
                           self.passes)


def sketch_matrix(d: int, l: int, seed: int, device=None) -> torch.Tensor:
    """A fixed d x l Gaussian test matrix with orthonormal columns (seeded; CPU draw, then moved)."""
    g = torch.Generator("cpu").manual_seed(int(seed) * 1_000_003 + d)
    om = torch.randn(d, l, generator=g, dtype=torch.float64)
    return torch.linalg.qr(om)[0].float().to(device)


def nystrom_eig(Y: torch.Tensor, omega: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs (descending) of the Nystrom approximation K_hat = Y (Omega^T Y)^+ Y^T of a PSD K from its sketch
    Y = K Omega, computed stably with a small shift nu (float64): K_hat <= K."""
    Yd, om = Y.double(), omega.double()
    nu = float(torch.finfo(torch.float32).eps * max(float(torch.linalg.matrix_norm(Yd)), 1e-300) * Yd.shape[0] ** 0.5)
    Yn = Yd + nu * om
    Bm = om.T @ Yn
    Bm = (Bm + Bm.T) / 2
    for jitter in (0.0, 1e-10, 1e-8, 1e-6):
        C, info = torch.linalg.cholesky_ex(Bm + jitter * float(Bm.diagonal().abs().max()) * torch.eye(len(Bm), dtype=Bm.dtype, device=Bm.device))
        if int(info) == 0:
            break
    else:
        raise RuntimeError("Nystrom sketch: Omega^T Y is not positive definite")
    E = torch.linalg.solve_triangular(C, Yn.T, upper=False).T  # Yn C^{-T}
    U, S, _ = torch.linalg.svd(E, full_matrices=False)
    return (S.pow(2) - nu).clamp_min(0), U
