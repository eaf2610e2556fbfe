"""Pure-torch SEMU math: projection, rank selection, batched SVD, layers."""
import pytest
import torch

from semu_diffusion.svd import flatten_weight, gradient_subspaces, per_channel_subspaces, project_orthogonal, select_rank


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


def test_retain_directions_hold_the_asked_energy_and_are_removed():
    from semu_diffusion.svd import remove_directions, retain_directions

    g = torch.Generator().manual_seed(0)
    Q1, _ = torch.linalg.qr(torch.randn(20, 20, generator=g))
    Q2, _ = torch.linalg.qr(torch.randn(30, 30, generator=g))
    S = torch.tensor([10.0, 5.0, 1.0] + [0.01] * 17)
    Gr = Q1 @ torch.diag(S) @ Q2[:, :20].T  # energy 100, 25, 1, ...
    U, V = retain_directions(Gr, 0.95, "both")
    assert U.shape == (20, 2) and V.shape == (30, 2)  # 100/126 < 0.95 <= 125/126
    U1, V1 = retain_directions(Gr, 0.5, "in")
    assert U1 is None and V1.shape == (30, 1)
    Gf = torch.randn(20, 30, generator=g)
    out = remove_directions(Gf, U, V)
    assert (U.T @ out).abs().max() < 1e-5 and (out @ V).abs().max() < 1e-5
    # nothing else changes: the part of Gf orthogonal to both subspaces is kept exactly
    Pu, Pv = torch.eye(20) - U @ U.T, torch.eye(30) - V @ V.T
    torch.testing.assert_close(out, Pu @ Gf @ Pv, atol=1e-5, rtol=0)
    conv = torch.randn(4, 3, 3, 3, generator=g)
    Uc, Vc = retain_directions(torch.randn(4, 3, 3, 3, generator=g), 0.9, "in")
    assert remove_directions(conv, None, Vc).shape == conv.shape
    assert (flatten_weight(remove_directions(conv, None, Vc)) @ Vc).abs().max() < 1e-5


def test_semu_retain_aware_subspace_avoids_the_retain_directions():
    """SEMU with retain_energy > 0: every trained input direction V_r is orthogonal to the retain gradient's leading
    input directions, so the update leaves the retained inputs' outputs alone; without it they overlap."""
    from semu_diffusion.methods.base import MethodConfig
    from semu_diffusion.methods.semu import SEMU
    from semu_diffusion.svd import retain_directions

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.Conv2d(4, 6, 3))
    names = ["0", "1"]
    shared = {"0": torch.randn(12, 1) @ torch.randn(1, 16), "1": torch.randn(6, 1) @ torch.randn(1, 36)}
    forget = {n: (3 * shared[n] + 0.3 * torch.randn(shared[n].shape)).reshape(net.get_submodule(n).weight.shape)
              for n in names}
    retain = {n: (shared[n] + 0.01 * torch.randn(shared[n].shape)).reshape(net.get_submodule(n).weight.shape)
              for n in names}

    def overlap(energy):
        m = SEMU(MethodConfig(tau=0.9, r_min=1, r_max=4, project=False, retain_energy=energy))
        assert m.needs_retain_gradient == (energy > 0)
        m.setup(net, names, forget, retain_grads=retain if energy else None)
        worst = 0.0
        for n, layer in m.layers.items():
            _, Vr = retain_directions(retain[n], 0.9, "in")
            worst = max(worst, float((layer.V.T @ Vr).abs().max()))
        m.restore(net)
        return worst

    assert overlap(0.0) > 0.9  # the forget gradient's top direction is the shared one
    assert overlap(0.9) < 1e-4
    with pytest.raises(ValueError, match="retain"):
        SEMU(MethodConfig(retain_energy=0.5)).setup(net, names, forget)


def test_retain_directions_randomized_path_matches_the_exact_one():
    from semu_diffusion.svd import retain_directions

    g = torch.Generator().manual_seed(1)
    Gr = torch.randn(300, 5, generator=g) @ torch.randn(5, 400, generator=g) + 1e-3 * torch.randn(300, 400, generator=g)
    _, V_exact = retain_directions(Gr, 0.9)
    _, V_fast = retain_directions(Gr, 0.9, max_full=64)
    assert V_exact.shape == V_fast.shape
    torch.testing.assert_close(V_fast @ V_fast.T, V_exact @ V_exact.T, atol=1e-3, rtol=0)  # same subspace


def test_semu_setup_consume_frees_the_gradients_and_changes_nothing():
    """erase() passes consume=True: SEMU pops each forget gradient once it is in its SVD batch (bounded memory);
    the subspaces are the same as without it."""
    from semu_diffusion.methods.base import MethodConfig
    from semu_diffusion.methods.semu import SEMU

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.Conv2d(4, 6, 3), torch.nn.Linear(16, 12))
    grads = {n: torch.randn(net.get_submodule(n).weight.shape) for n in ("0", "1", "2")}
    res = {}
    for consume in (False, True):
        g = dict(grads)
        m = SEMU(MethodConfig(tau=0.9, r_max=4))
        m.setup(net, list(grads), g, consume=consume)
        assert (len(g) == 0) == consume
        res[consume] = {n: (layer.U.clone(), layer.V.clone()) for n, layer in m.layers.items()}
        m.restore(net)
    for n in grads:
        torch.testing.assert_close(res[True][n][0], res[False][n][0])
        torch.testing.assert_close(res[True][n][1], res[False][n][1])
