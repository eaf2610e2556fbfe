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
