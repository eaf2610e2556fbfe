"""Pure-torch SEMU math: projection, rank selection, batched SVD, layers."""
import pytest
import torch

from semu_diffusion.svd import gradient_subspaces, per_channel_subspaces, project_orthogonal, select_rank


def test_projection_is_orthogonal_and_uses_squared_norm():
    g = torch.Generator().manual_seed(0)
    W, G = torch.randn(20, 30, generator=g) * 3, torch.randn(20, 30, generator=g)
    P = project_orthogonal(G, W)
    assert abs((P * W).sum().item()) < 1e-4 * W.norm().item() * G.norm().item()
    # dividing by ||W|| instead of ||W||^2 (the reference-code bug) would not be orthogonal
    wrong = G - (G * W).sum() / W.norm() * W
    assert abs((wrong * W).sum().item()) > 1.0
    # a G already orthogonal to W is unchanged
    assert torch.allclose(project_orthogonal(P, W), P, atol=1e-5)


def test_select_rank_energy_and_clamps():
    S = torch.tensor([3.0, 2.0, 1.0, 0.5])  # energies 9,4,1,.25 of 14.25
    assert select_rank(S, 0.63) == 1  # 9/14.25 = 0.6316
    assert select_rank(S, 0.93) == 2  # 13/14.25 = 0.912
    assert select_rank(S, 0.99) == 3
    assert select_rank(S, 1.0) == 4
    assert select_rank(S, 0.1) == 1  # r_min = 1 never freezes a layer
    assert select_rank(S, 0.1, r_min=2) == 2
    assert select_rank(S, 1.0, r_max=2) == 2
    assert select_rank(torch.zeros(4), 0.95) == 1
    with pytest.raises(ValueError):
        select_rank(S, 0.0)


def test_batched_subspaces_match_per_layer_svd():
    g = torch.Generator().manual_seed(1)
    grads = {f"l{i}": torch.randn(16, 8, 3, 3, generator=g) for i in range(3)}
    grads["lin"] = torch.randn(12, 20, generator=g)
    subs = gradient_subspaces(grads, tau=0.5, r_max=None)
    for n, G in grads.items():
        M = G.reshape(G.shape[0], -1)
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        s = subs[n]
        assert s.rank == select_rank(S, 0.5)
        assert torch.allclose(s.S, S[: s.rank], atol=1e-4)
        # same subspace: projectors agree (singular vectors are defined up to sign)
        assert torch.allclose(s.U @ s.U.T, U[:, : s.rank] @ U[:, : s.rank].T, atol=1e-4)
        assert torch.allclose(s.V @ s.V.T, Vh[: s.rank].T @ Vh[: s.rank], atol=1e-4)
        assert 0 < s.energy <= 1


def test_exact_low_rank_gradient_recovered():
    g = torch.Generator().manual_seed(2)
    G = torch.randn(32, 3, generator=g) @ torch.randn(3, 40, generator=g)
    s = gradient_subspaces({"a": G}, tau=1.0, r_max=3)["a"]
    assert s.rank == 3 and s.energy > 0.999999
    assert torch.allclose(s.U @ torch.diag(s.S) @ s.V.T, G, atol=1e-3)


def test_per_channel_subspaces_shapes():
    G = torch.randn(8, 5, 3, 3)
    subs = per_channel_subspaces(G, tau=0.9)
    assert len(subs) == 5 and all(s.U.shape[0] == 8 and s.V.shape[0] == 9 for s in subs)


def test_layers_train_only_R_and_start_at_zero():
    from semu_diffusion.layers import SEMUConv2d, SEMULinear, inject

    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Conv2d(3, 4, 3, padding=1))
    x1 = torch.randn(2, 6)
    y0 = net[0](x1)
    subs = gradient_subspaces({"0": torch.randn(5, 6), "1": torch.randn(4, 3, 3, 3)}, tau=0.8)
    layers = inject(net, subs)
    assert isinstance(net[0], SEMULinear) and isinstance(net[1], SEMUConv2d)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert sorted(trainable) == ["0.R", "1.R"]
    assert torch.allclose(net[0](x1), y0)  # R = 0: the model is unchanged
    net[0].R.data.fill_(0.3)
    assert not torch.allclose(net[0](x1), y0)
    assert layers["0"].delta_weight().shape == (5, 6)


def test_lowrank_solver_matches_full_svd():
    g = torch.Generator().manual_seed(5)
    grads = {f"c{i}": (torch.randn(64, 4, generator=g) * torch.tensor([8.0, 4.0, 2.0, 1.0])) @ torch.randn(4, 9 * 32, generator=g)
             + 0.01 * torch.randn(64, 9 * 32, generator=g) for i in range(3)}
    full = gradient_subspaces(grads, tau=0.9, r_max=6, solver="full")
    low = gradient_subspaces(grads, tau=0.9, r_max=6, solver="lowrank")
    state = torch.random.get_rng_state()
    gradient_subspaces(grads, tau=0.9, r_max=6, solver="auto")
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    for n in grads:
        assert full[n].rank == low[n].rank
        assert full[n].energy == pytest.approx(low[n].energy, rel=1e-4)
        P1, P2 = full[n].U @ full[n].U.T, low[n].U @ low[n].U.T
        assert torch.allclose(P1, P2, atol=1e-3)
