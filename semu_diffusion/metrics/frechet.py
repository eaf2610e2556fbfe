"""Fréchet distance between Gaussians fitted to features, in float64 with a sound matrix square root."""
from __future__ import annotations

import numpy as np
import torch


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via its eigendecomposition."""
    a = (a + a.T) / 2
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), all in float64.

    Uses the symmetric form (S1^1/2 S2 S1^1/2)^1/2, whose trace equals Tr((S1 S2)^1/2) but is the root of a
    symmetric PSD matrix, so no complex parts or ill-conditioned non-symmetric sqrtm are involved.
    """
    mu1, mu2 = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(x, dtype=np.float64)) for x in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    r1 = _sqrtm_psd(s1)
    covmean = _sqrtm_psd(r1 @ s2 @ r1)
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    return max(d, 0.0)


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    f = features.double().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError("need a (n >= 2, d) feature matrix")
    return f.mean(0), np.cov(f, rowvar=False)


class FrechetDistance:
    """torchmetrics-style accumulator: ``update(features, real=...)`` then ``compute()``."""

    def __init__(self):
        self.real: list[torch.Tensor] = []
        self.fake: list[torch.Tensor] = []
        self.real_stats: tuple[np.ndarray, np.ndarray] | None = None

    def set_real_stats(self, mu, sigma) -> None:
        self.real_stats = (np.asarray(mu, np.float64), np.asarray(sigma, np.float64))

    def update(self, features: torch.Tensor, real: bool) -> None:
        (self.real if real else self.fake).append(features.detach().double().cpu())

    def compute(self) -> float:
        real = self.real_stats or feature_stats(torch.cat(self.real))
        return frechet_distance(*real, *feature_stats(torch.cat(self.fake)))


def inception_features(images_uint8: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """Standard FID Inception-v3 pool features (2048-d) from uint8 images, via torchmetrics/torch-fidelity.

    Needs the FID Inception weights available locally; offline without them it raises a one-line RuntimeError.
    """
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except Exception as e:  # torch-fidelity missing
        raise RuntimeError("Inception FID needs torch-fidelity (pip install torch-fidelity) and its weights; "
                           "use the default FD-CLIP features offline") from e
    try:
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"]).to(device)
    except Exception as e:
        raise RuntimeError("the FID Inception weights are not available offline: put them in the torch hub cache "
                           "or use the default FD-CLIP features") from e
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).contiguous()  # uint8 [0,255], as the extractor expects
    out = [net(x[i : i + 64].to(device)).double().cpu() for i in range(0, len(x), 64)]
    return torch.cat(out)
