"""Rival methods: each changes only the parameters it claims to, and each delta round-trips through save/load."""
import pytest
import torch

from semu_diffusion import erase, load_delta
from semu_diffusion.delta import read_delta, remove_delta
from semu_diffusion.methods import available_methods
from semu_diffusion.methods.dense import CROSS_ATTN, top_share_mask
from semu_diffusion.recipes import recipe_for, select_targets

FAST = dict(steps=3, forget_n=2, batch_size=2, progress=False, log=lambda *a: None)


def test_registry_lists_all_methods():
    assert set(available_methods()) >= {"semu", "full", "salun", "esd-x", "esd-u", "sap"}


def test_top_share_mask_is_global():
    s = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([10.0, 0.0])}
    m = top_share_mask(s, 0.5)
    assert m["a"].tolist() == [False, False, True, True] and m["b"].tolist() == [True, False]


@pytest.mark.parametrize("method", ["full", "salun", "esd-x", "esd-u", "sap"])
def test_dense_method_touches_only_its_parameters(method, random_pipe, tmp_path):
    unet = random_pipe.unet
    w0 = {k: v.clone() for k, v in unet.state_dict().items()}
    out = tmp_path / f"{method}.safetensors"
    opts = {"sap_probes": 1} if method == "sap" else None
    res = erase("star", pipe=random_pipe, method=method, out=out, lr=1e-2, method_options=opts, **FAST)
    for k, v in unet.state_dict().items():
        assert torch.equal(v, w0[k]), k  # base restored
    d, prov = read_delta(out)
    assert prov["method"] == method and d.format == "dense" and not d.lora
    targets = set(select_targets(unet, recipe_for(unet.config).include))
    names = set(d.dense)
    linconv = {n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    if method in ("full", "sap"):
        assert names == targets
    elif method == "salun":
        assert names == linconv
    elif method == "esd-x":
        assert names == {n for n in linconv if CROSS_ATTN.search(n)}
    else:
        assert names == {n for n in linconv if not CROSS_ATTN.search(n)}
    changed = sum(int((dw != 0).sum()) for dw in d.dense.values())
    total = sum(dw.numel() for dw in d.dense.values())
    assert changed > 0
    if method == "salun":  # top 50% of |gradient|: at most half the entries move
        assert changed <= 0.5 * total + 1 and res.stats["trainable_params"] == pytest.approx(0.5 * total, rel=0.01)
    if method == "sap":  # top 5% of the Hessian diagonal
        assert changed <= 0.05 * total + 1
    # round trip: load adds exactly the delta, remove restores
    load_delta(random_pipe, out)
    for n, dw in d.dense.items():
        assert torch.allclose(unet.get_submodule(n).weight, w0[n + ".weight"] + dw, atol=1e-6)
    remove_delta(random_pipe, out)
    for n in d.dense:
        assert torch.allclose(unet.get_submodule(n).weight, w0[n + ".weight"], atol=1e-6)


def test_semu_changes_only_target_layers(random_pipe, tmp_path):
    unet = random_pipe.unet
    out = tmp_path / "semu.safetensors"
    erase("star", pipe=random_pipe, out=out, **FAST)
    d, _ = read_delta(out)
    assert set(d.lora) == set(select_targets(unet, recipe_for(unet.config).include))


def test_curriculum_option_runs_and_is_recorded(random_pipe, tmp_path):
    out = tmp_path / "cur.safetensors"
    erase("star", pipe=random_pipe, out=out, curriculum=True, **FAST)
    _, prov = read_delta(out)
    assert prov["curriculum"] is True


@pytest.mark.parametrize("method,expect", [("semu", 2), ("esd-x", 0)])
def test_anchor_share_adds_anchor_latents_to_remap_methods_only(method, expect, random_pipe, tmp_path):
    out = tmp_path / f"{method}-anchor.safetensors"
    res = erase("star", pipe=random_pipe, method=method, out=out, anchor_share=1.0, **FAST)
    assert res.stats["forget_latents"] == 2 and res.stats["anchor_latents"] == expect
    _, prov = read_delta(out)
    assert prov["anchor_share"] == (1.0 if expect else 0.0)
    with pytest.raises(ValueError, match="anchor-share"):
        erase("star", pipe=random_pipe, method=method, anchor_share=9.0, **FAST)
