"""The erasure engine: only the trained parameters get gradients, and the caller's requires_grad state survives."""
import pytest
import torch

from semu_diffusion import erase
from semu_diffusion import trainer as T

FAST = dict(steps=2, forget_n=2, batch_size=2, progress=False, log=lambda *a: None)


@pytest.mark.parametrize("method", ["semu", "full"])
def test_only_trained_parameters_get_gradients(method, random_pipe, tmp_path, monkeypatch):
    unet = random_pipe.unet
    unet.conv_in.weight.requires_grad_(False)  # a non-trivial caller state that must come back as it was
    before = {n: p.requires_grad for n, p in unet.named_parameters()}
    seen = []

    class SpyAdam(torch.optim.Adam):
        def step(self, *a, **k):
            trained = {id(p) for g in self.param_groups for p in g["params"]}
            seen.append([n for n, p in unet.named_parameters() if p.grad is not None and id(p) not in trained])
            seen.append(len(trained))
            return super().step(*a, **k)

    monkeypatch.setattr(T.torch.optim, "Adam", SpyAdam)
    erase("star", pipe=random_pipe, method=method, out=tmp_path / "d.safetensors", **FAST)
    assert len(seen) == 2 * FAST["steps"]
    assert all(s == [] for s in seen[::2]), seen[0][:5]  # no gradient outside the trained set, at every step
    assert all(n > 0 for n in seen[1::2])
    assert [n for n, p in unet.named_parameters() if p.grad is not None] == []
    assert {n: p.requires_grad for n, p in unet.named_parameters()} == before


def test_frozen_restores_by_identity():
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    m[1].bias.requires_grad_(False)
    with T.frozen(m):
        assert not any(p.requires_grad for p in m.parameters())
        m[0].weight.requires_grad_(True)
        m[0](torch.ones(1, 2)).sum().backward()
    assert [p.requires_grad for p in m.parameters()] == [True, True, True, False]
    assert all(p.grad is None for p in m.parameters())


def test_semu_paper_preset(random_pipe, tmp_path):
    from semu_diffusion.delta import read_delta

    out = tmp_path / "paper.safetensors"
    res = erase("star", pipe=random_pipe, preset="semu-paper", out=out, **FAST)
    prov = res.provenance
    assert prov["preset"] == "semu-paper" and prov["method"] == "semu" and prov["conv_mode"] == "per-channel"
    assert prov["r_min"] == 0 and prov["project"] is False and prov["remap_target"] == "current"
    assert prov["anchor"] == "cross"  # c' = the next class after star in the recipe's class list
    assert prov["choices"]["remap_target"].startswith("current model")
    linconv = {n for n, m in random_pipe.unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    frozen = set(prov["method_info"]["frozen_layers"])
    d, _ = read_delta(out)
    assert set(d.modules()) | frozen == linconv and not (set(d.modules()) & frozen)  # every Linear/Conv2d targeted
    ones = {n for n in linconv if isinstance(random_pipe.unet.get_submodule(n), torch.nn.Conv2d)
            and random_pipe.unet.get_submodule(n).kernel_size == (1, 1)}
    assert ones and ones <= frozen  # 1x1 convs: rank-1 channel slices with energy 1 > tau -> r = 0, frozen
    assert all(d.dense[n].dim() == 4 for n in d.dense)  # per-channel conv updates are dense


def test_esd_paper_preset_has_no_retain_term(random_pipe, tmp_path):
    res = erase("star", pipe=random_pipe, preset="esd-x-paper", out=tmp_path / "e.safetensors", **FAST)
    assert res.provenance["method"] == "esd-x" and res.provenance["retain_weight"] == 0.0
    assert res.provenance["choices"]["retain_term"] == "none"
    assert res.provenance["preset_choices"]["retain_weight"] == 0.0


def test_cufg_corrector_math():
    gf = [torch.tensor([1.0, 0.0]), torch.tensor([1.0])]
    gr = [torch.tensor([-1.0, 1.0]), torch.tensor([0.0])]  # <gf, gr> = -1 < 0, ||gr||^2 = 2
    out, conflict = T.cufg_correct(gf, gr)
    assert conflict and torch.allclose(out[0], torch.tensor([0.5, 0.5])) and torch.allclose(out[1], torch.tensor([1.0]))
    assert sum((a * b).sum() for a, b in zip(out, gr)).abs() < 1e-6  # no longer opposes the retain gradient
    same, c2 = T.cufg_correct(gf, [torch.tensor([1.0, 0.0]), torch.tensor([0.0])])
    assert not c2 and same is gf


def test_cufg_erase_runs_and_is_recorded(random_pipe, tmp_path):
    res = erase("star", pipe=random_pipe, cufg=True, retain_weight=1.0, out=tmp_path / "c.safetensors", **FAST)
    assert res.provenance["cufg"] is True and res.provenance["choices"]["cufg_gradient_corrector"] is True


def test_esd_trajectory_xt(random_pipe, tmp_path):
    res = erase("star", pipe=random_pipe, method="esd-x", esd_trajectory=True, out=tmp_path / "t.safetensors", **FAST)
    assert res.provenance["esd_trajectory"] is True and "trajectory" in res.provenance["choices"]["x_t"]
    # by hand: a trajectory stopped after 0 steps is the noise at t = T-1; with a UNet predicting eps = 0 each DDIM
    # step maps z -> sqrt(a_next / a) z, so after k steps z = sqrt(a_{t_k} / a_{T-1}) * noise
    acp = torch.tensor([0.9, 0.5, 0.1])

    def unet(z, t, encoder_hidden_states=None):
        class R:
            sample = torch.zeros_like(z)  # predicts eps = 0: x0 = z / sqrt(a), z_next = sqrt(a_next / a) z
        return R

    g = torch.Generator().manual_seed(0)
    noise = torch.ones(1, 1)
    outs = {}
    for _ in range(20):
        z, t = T.trajectory_sample(unet, {"hidden": torch.zeros(1, 1)}, {"hidden": torch.zeros(1, 1)}, acp, noise, 3, 3.0, g)
        outs[int(t)] = float(z)
    assert outs[2] == 1.0 and outs[1] == pytest.approx((0.5 / 0.1) ** 0.5) and outs[0] == pytest.approx((0.9 / 0.1) ** 0.5)
    with pytest.raises(ValueError, match="esd-trajectory"):
        erase("star", pipe=random_pipe, esd_trajectory=True, **FAST)


def test_lean_forget_gradient_equals_joint(random_pipe):
    """The two-pass forget gradient (one pass's activations alive at a time) equals the joint 2B-batch one."""
    from contextlib import nullcontext

    from semu_diffusion.recipes import recipe_for, select_targets

    unet = random_pipe.unet
    names = select_targets(unet, recipe_for(unet.config).include)[:6]
    c = T.Conditioner(random_pipe, "cpu")
    fc, uc = c.embed(["a star", "a photo of a star"]), c.embed([""])
    lat = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = T.TrainConfig(batch_size=2, forget_n=3)
    acp = random_pipe.scheduler.alphas_cumprod
    a = T.forget_gradient(unet, lat, acp, fc, uc, names, cfg, "cpu", nullcontext, progress=False, lean=True)
    b = T.forget_gradient(unet, lat, acp, fc, uc, names, cfg, "cpu", nullcontext, progress=False, lean=False)
    for n in names:
        assert float((a[n] - b[n]).norm() / b[n].norm()) < 1e-4, n  # batch-size-dependent kernels: float rounding only
    assert all(p.grad is None for p in unet.parameters())
