"""Metrics with known answers: Fréchet distance closed forms, CLIP score, zero-shot classifier on real toy images."""
import numpy as np
import pytest
import torch

from semu_diffusion.metrics import FrechetDistance, clip_score_from_features, feature_stats, frechet_distance


def test_fd_identical_is_zero():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(8, 8))
    S = A @ A.T + np.eye(8)
    mu = rng.normal(size=8)
    assert abs(frechet_distance(mu, S, mu, S)) < 1e-8


def test_fd_mean_shift_closed_form():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(6, 6))
    S = A @ A.T + 0.1 * np.eye(6)
    mu = rng.normal(size=6)
    for shift in (0.5, 1.0, 3.0):
        d = np.full(6, shift)
        assert frechet_distance(mu, S, mu + d, S) == pytest.approx(float(d @ d), rel=1e-8, abs=1e-8)


def test_fd_diagonal_covariances_closed_form():
    # for commuting (diagonal) covariances: sum (sqrt(a) - sqrt(b))^2
    a = np.array([1.0, 4.0, 9.0, 0.25])
    b = np.array([4.0, 1.0, 9.0, 1.0])
    exp = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert frechet_distance(np.zeros(4), np.diag(a), np.zeros(4), np.diag(b)) == pytest.approx(exp, rel=1e-10)


def test_fd_matches_scipy_sqrtm_form():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(400, 16)), rng.normal(size=(400, 16)) * 1.3 + 0.2
    m1, s1 = feature_stats(torch.from_numpy(X))
    m2, s2 = feature_stats(torch.from_numpy(Y))
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    ref = float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-6)


def test_fd_rank_deficient_covariances_stay_finite():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(10, 32))  # n < d: singular covariance
    m, s = feature_stats(torch.from_numpy(X))
    d = frechet_distance(m, s, m, s)
    assert np.isfinite(d) and d < 1e-6


def test_fd_accumulator():
    rng = np.random.default_rng(4)
    fd = FrechetDistance()
    fd.update(torch.from_numpy(rng.normal(size=(500, 4))), real=True)
    fd.update(torch.from_numpy(rng.normal(size=(500, 4)) + 2.0), real=False)
    assert fd.compute() == pytest.approx(16.0, rel=0.1)


def test_clip_score_definition():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert clip_score_from_features(a, b).tolist() == pytest.approx([100.0, 0.0, 0.0])


def test_running_stats_match_feature_stats_batch_by_batch():
    from semu_diffusion.evaluation.features import RunningStats

    rng = np.random.default_rng(7)
    X = rng.normal(size=(257, 12)) * 3 + 1
    rs = RunningStats()
    for i in range(0, len(X), 50):
        rs.update(X[i: i + 50])
    mu, s = rs.compute()
    m2, s2 = feature_stats(torch.from_numpy(X))
    assert np.allclose(mu, m2, atol=1e-12) and np.allclose(s, s2, atol=1e-10)


def test_kid_unbiased_zero_for_same_distribution_and_positive_for_shift():
    from semu_diffusion.evaluation.features import kid

    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same, _ = kid(a, b, subsets=20, subset_size=200)
    shifted, _ = kid(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.05 and shifted > 0.5
