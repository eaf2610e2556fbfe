"""Bias updates in dense deltas (``unet.<module>.delta_bias``) and ESD's paper-exact presets, which train weights and
biases as the official ESD code: round trip, exact application and removal, merge, the presets' deltas and their
records, and hostile bias entries refused with one line before anything changes."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import unet_out
from semu_diffusion import erase, load_delta, merge_deltas
from semu_diffusion.delta import DeltaError, fingerprint, read_delta, remove_delta, save_delta
from semu_diffusion.merge import load_deltas, unload_deltas
from semu_diffusion.methods import get_method
from semu_diffusion.methods.base import Delta
from semu_diffusion.methods.dense import CROSS_ATTN

OUT0 = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0"  # Linear with a bias
TO_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q"  # Linear without a bias
CONV = "down_blocks.1.resnets.0.conv1"  # Conv2d with a bias
FAST = dict(steps=3, forget_n=2, batch_size=2, lr=1e-2, progress=False, log=lambda *a: None)


def _bias_delta(unet, seed=0, mods=(OUT0, CONV), scale=0.01) -> Delta:
    g = torch.Generator().manual_seed(seed)
    d = Delta(format="dense")
    for n in mods:
        m = unet.get_submodule(n)
        d.dense[n] = torch.randn(m.weight.shape, generator=g) * scale
        d.dense_bias[n] = torch.randn(m.bias.shape, generator=g) * scale
    return d


def _save(unet, path, d: Delta):
    return save_delta(path, d, {"method": "esd-x", "base_model": "random", "base_fingerprint": fingerprint(unet, d.modules())})


def _snapshot(unet):
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def _same(unet, snap) -> bool:
    now = unet.state_dict()
    return set(now) == set(snap) and all(torch.equal(now[k], snap[k]) for k in snap)


@torch.no_grad()
def _reference_out(unet, d: Delta, strength=1.0):
    """UNet output with W0 + s dW and b0 + s db written by hand (then the base put back)."""
    snap = _snapshot(unet)
    for n, dw in d.dense.items():
        w = unet.get_submodule(n).weight
        w.copy_(w.float() + strength * dw.reshape(w.shape))
    for n, db in d.dense_bias.items():
        b = unet.get_submodule(n).bias
        b.copy_(b.float() + strength * db)
    y = unet_out(unet)
    unet.load_state_dict(snap)
    return y


# ------------------------------------------------------------------------------------------------- format
def test_bias_delta_round_trips_and_applies_exactly(random_pipe, tmp_path):
    unet = random_pipe.unet
    d = _bias_delta(unet)
    p = _save(unet, tmp_path / "b.safetensors", d)
    with safe_open(str(p), "pt") as f:
        keys = set(f.keys())
    assert keys == {f"unet.{n}.{k}" for n in (OUT0, CONV) for k in ("delta_weight", "delta_bias")}
    r, prov = read_delta(p)
    assert prov["delta_format"] == "dense" and r.modules() == sorted([OUT0, CONV])
    assert set(r.dense_bias) == {OUT0, CONV} and all(torch.equal(r.dense_bias[n], d.dense_bias[n]) for n in d.dense_bias)
    assert all(torch.equal(r.dense[n], d.dense[n]) for n in d.dense)
    assert r.numel() == sum(t.numel() for t in [*d.dense.values(), *d.dense_bias.values()])

    base = _snapshot(unet)
    y0 = unet_out(unet)
    ref = _reference_out(unet, d, 0.5)
    load_delta(random_pipe, p, strength=0.5)
    for n in (OUT0, CONV):
        m = unet.get_submodule(n)
        assert torch.equal(m.bias, base[n + ".bias"] + 0.5 * d.dense_bias[n])
        assert torch.equal(m.weight, base[n + ".weight"] + 0.5 * d.dense[n])
    y = unet_out(unet)
    assert torch.equal(y, ref) and not torch.allclose(y, y0)
    remove_delta(random_pipe, p, strength=0.5)
    now = unet.state_dict()
    assert max(float((now[k] - base[k]).abs().max()) for k in base) < 1e-6  # (x + d) - d, one rounding away
    assert torch.allclose(unet_out(unet), y0, atol=1e-5)


def test_bias_only_entry_and_merge(random_pipe, tmp_path):
    unet = random_pipe.unet
    a = _bias_delta(unet, seed=1)
    b = Delta(format="dense", dense_bias={OUT0: torch.randn(unet.get_submodule(OUT0).bias.shape) * 0.01})
    pa, pb = _save(unet, tmp_path / "a.safetensors", a), _save(unet, tmp_path / "b.safetensors", b)
    rb, _ = read_delta(pb)
    assert rb.modules() == [OUT0] and not rb.dense  # a bias-only module is a valid dense delta
    merged = merge_deltas([pa, pb], tmp_path / "m.safetensors", weights=[1.0, -2.0])
    m, prov = read_delta(merged)
    assert prov["delta_format"] == "dense"
    assert torch.allclose(m.dense_bias[OUT0], a.dense_bias[OUT0] - 2 * b.dense_bias[OUT0], atol=1e-7)
    assert torch.equal(m.dense_bias[CONV], a.dense_bias[CONV]) and torch.equal(m.dense[CONV], a.dense[CONV])
    # the merge equals stacking the sources, and unloading the stack restores the base
    y0, base = unet_out(unet), _snapshot(unet)
    load_delta(random_pipe, merged)
    ym = unet_out(unet)
    unet.load_state_dict(base)  # bit-exact base again (a removal is one rounding away, which the fingerprint sees)
    load_deltas(random_pipe, [pa, pb], weights=[1.0, -2.0])
    assert torch.allclose(unet_out(unet), ym, atol=1e-5)
    unload_deltas(random_pipe, [pa, pb], weights=[1.0, -2.0])
    assert torch.allclose(unet_out(unet), y0, atol=1e-5)
    assert max(float((unet.state_dict()[k] - base[k]).abs().max()) for k in base) < 1e-6


# ------------------------------------------------------------------------------------------------- presets
def _with_bias(unet, pred):
    return {n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and pred(n)
            and m.bias is not None}


@pytest.mark.parametrize("preset", ["esd-x-paper", "esd-u-paper"])
def test_esd_paper_preset_trains_biases(preset, random_pipe, tmp_path):
    unet = random_pipe.unet
    base = _snapshot(unet)
    req = {n: p.requires_grad for n, p in unet.named_parameters()}
    out = tmp_path / f"{preset}.safetensors"
    res = erase("star", pipe=random_pipe, preset=preset, out=out, **FAST)
    assert _same(unet, base)  # weights and biases back at the base
    assert {n: p.requires_grad for n, p in unet.named_parameters()} == req
    assert all(p.grad is None for p in unet.parameters())
    d, prov = read_delta(out)
    x = preset == "esd-x-paper"
    pred = (lambda n: bool(CROSS_ATTN.search(n))) if x else (lambda n: not CROSS_ATTN.search(n))
    with_bias = _with_bias(unet, pred)
    assert set(d.dense_bias) == with_bias and with_bias <= set(d.dense)
    if x:  # diffusers' attn2.to_q/k/v have no bias, to_out.0 has one
        assert with_bias and all(n.endswith("attn2.to_out.0") for n in with_bias)
    assert all(float(db.norm()) > 0 for db in d.dense_bias.values())
    n_bias = sum(db.numel() for db in d.dense_bias.values())
    n_w = sum(dw.numel() for dw in d.dense.values())
    assert res.stats["trainable_params"] == n_w + n_bias
    info = prov["method_info"]
    assert info["train_bias"] is True and info["bias_params"] == n_bias and info["bias_modules"] == len(with_bias)
    assert prov["method_options"]["train_bias"] is True and prov["preset"] == preset
    # the loaded delta is W0 + dW, b0 + db
    ref = _reference_out(unet, d)
    load_delta(random_pipe, out)
    assert torch.equal(unet_out(unet), ref)
    remove_delta(random_pipe, out)
    assert max(float((unet.state_dict()[k] - base[k]).abs().max()) for k in base) < 1e-6


def test_default_esd_trains_weights_only_and_user_option_wins(random_pipe, tmp_path):
    res = erase("star", pipe=random_pipe, method="esd-x", out=tmp_path / "x.safetensors", **FAST)
    d, prov = read_delta(tmp_path / "x.safetensors")
    assert d.dense and not d.dense_bias and prov["method_info"]["train_bias"] is False
    assert res.stats["trainable_params"] == sum(dw.numel() for dw in d.dense.values())
    # an explicit method option beats the preset's
    erase("star", pipe=random_pipe, preset="esd-x-paper", out=tmp_path / "p.safetensors",
          method_options={"train_bias": False}, **FAST)
    d2, prov2 = read_delta(tmp_path / "p.safetensors")
    assert not d2.dense_bias and prov2["method_options"] == {"train_bias": False}
    # and the option is available to every dense method
    erase("star", pipe=random_pipe, method="full", out=tmp_path / "f.safetensors", method_options={"train_bias": True},
          **FAST)
    d3, _ = read_delta(tmp_path / "f.safetensors")
    assert d3.dense_bias and set(d3.dense_bias) <= set(d3.dense)


def test_train_bias_must_be_boolean():
    with pytest.raises(ValueError, match="train_bias must be true or false"):
        get_method("esd-x")(None, train_bias="yes")


# ------------------------------------------------------------------------------------------------- hostile
def _tensors_meta(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


@pytest.fixture()
def good(random_pipe, tmp_path):
    return _save(random_pipe.unet, tmp_path / "good.safetensors", _bias_delta(random_pipe.unet))


def _refused(pipe, path, match):
    snap = _snapshot(pipe.unet)
    with pytest.raises(DeltaError, match=match) as e:
        load_delta(pipe, path)
    msg = str(e.value)
    assert "\n" not in msg
    assert _same(pipe.unet, snap)  # nothing modified
    return msg


def test_bias_of_wrong_length_is_refused(random_pipe, good, tmp_path):
    t, meta = _tensors_meta(good)
    t[f"unet.{OUT0}.delta_bias"] = torch.zeros(7)
    save_file(t, str(tmp_path / "bad.safetensors"), metadata=meta)
    msg = _refused(random_pipe, tmp_path / "bad.safetensors", r"delta_bias has shape \(7,\)")
    assert f"unet.{OUT0}.delta_bias" in msg and "made for" in msg


def test_bias_not_1d_is_refused(random_pipe, good, tmp_path):
    t, meta = _tensors_meta(good)
    b = t[f"unet.{OUT0}.delta_bias"]
    t[f"unet.{OUT0}.delta_bias"] = b.reshape(1, -1)
    save_file(t, str(tmp_path / "bad.safetensors"), metadata=meta)
    _refused(random_pipe, tmp_path / "bad.safetensors", r"is 1-D")
    with pytest.raises(DeltaError, match="is 1-D"):
        read_delta(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_bias_is_refused(random_pipe, good, tmp_path, value):
    t, meta = _tensors_meta(good)
    t[f"unet.{CONV}.delta_bias"][3] = value
    save_file(t, str(tmp_path / "bad.safetensors"), metadata=meta)
    _refused(random_pipe, tmp_path / "bad.safetensors", "NaN or Inf")


def test_huge_bias_is_refused(random_pipe, good, tmp_path):
    t, meta = _tensors_meta(good)
    t[f"unet.{CONV}.delta_bias"][0] = 5e4
    save_file(t, str(tmp_path / "bad.safetensors"), metadata=meta)
    _refused(random_pipe, tmp_path / "bad.safetensors", "values up to")
    t[f"unet.{CONV}.delta_bias"][0] = 900.0  # under the absolute bound, far over the module's scale
    save_file(t, str(tmp_path / "bad2.safetensors"), metadata=meta)
    _refused(random_pipe, tmp_path / "bad2.safetensors", "bias update of .* reaches")


def test_bias_for_module_without_bias_is_refused(random_pipe, tmp_path):
    unet = random_pipe.unet
    d = _bias_delta(unet)
    d.dense[TO_Q] = torch.zeros(unet.get_submodule(TO_Q).weight.shape)
    d.dense_bias[TO_Q] = torch.full((unet.get_submodule(TO_Q).weight.shape[0],), 0.01)
    p = _save(unet, tmp_path / "nobias.safetensors", d)
    msg = _refused(random_pipe, p, "has none in this model")
    assert f"unet.{TO_Q}.delta_bias" in msg and "remove that key" in msg


def test_lora_delta_with_bias_is_refused(random_pipe, tmp_path):
    unet = random_pipe.unet
    d = Delta(format="lora", dense_bias={OUT0: torch.zeros(unet.get_submodule(OUT0).bias.shape)})
    with pytest.raises(DeltaError, match="LoRA delta cannot carry bias updates"):
        save_delta(tmp_path / "x.safetensors", d, {"method": "semu"})
    assert not (tmp_path / "x.safetensors").exists()
    # a crafted one: a LoRA file plus a bias key
    w = unet.get_submodule(OUT0).weight
    lora = Delta(format="lora", lora={OUT0: (torch.randn(w.shape[0], 2) * 0.01, torch.randn(2, w.shape[1]))},
                 ranks={OUT0: 2})
    p = save_delta(tmp_path / "l.safetensors", lora, {"method": "semu", "base_model": "random",
                                                       "base_fingerprint": fingerprint(unet, [OUT0])})
    t, meta = _tensors_meta(p)
    t[f"unet.{OUT0}.delta_bias"] = torch.zeros(w.shape[0])
    save_file(t, str(tmp_path / "lb.safetensors"), metadata=meta)
    msg = _refused(random_pipe, tmp_path / "lb.safetensors", "LoRA delta cannot carry bias updates")
    assert f"unet.{OUT0}.delta_bias" in msg


def test_preset_method_options_merge_with_recipe_and_user():
    from semu_diffusion.config import EraseConfig, resolve
    from semu_diffusion.recipes import Recipe

    rec = Recipe(family="t", match={}, include=["x"], semu={}, train={}, generate={},
                 methods={"esd-x": {"lr": 0.01, "extra": 3, "train_bias": False}})
    r = resolve(EraseConfig(concept="star", preset="esd-x-paper"), rec)
    assert r.method_options == {"extra": 3, "train_bias": True}  # preset > recipe's method section
    u = resolve(EraseConfig(concept="star", preset="esd-u-paper", method_options={"train_bias": False, "k": 1}), rec)
    assert u.method_options == {"train_bias": False, "k": 1}  # explicit > preset
    assert resolve(EraseConfig(concept="star", method="esd-x"), rec).method_options == {"extra": 3, "train_bias": False}
