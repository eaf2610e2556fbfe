"""Export exactness: stock diffusers load_lora_weights reproduces the toolkit's merged weights."""
import copy

import pytest
import torch

from semu_diffusion import load_delta
from semu_diffusion.delta import DeltaError, fingerprint, read_delta, save_delta, to_kohya
from semu_diffusion.methods import MethodConfig, get_method
from semu_diffusion.recipes import recipe_for, select_targets
from conftest import unet_out as _unet_out

LINEAR = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
CONV1x1 = "down_blocks.0.attentions.0.proj_in"
CONV3x3 = "down_blocks.1.resnets.0.conv1"


def _stock_load(pipe, path, name):
    """Stock diffusers loading of a file (folder + weight_name: the form diffusers 0.35 accepts offline)."""
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)


def _low_rank_grad(shape, k, g):
    """A gradient of exact rank k (flattened to (out, rest))."""
    out = shape[0]
    rest = int(torch.tensor(shape[1:]).prod())
    return (torch.randn(out, k, generator=g) @ torch.randn(k, rest, generator=g)).reshape(shape)


def _make_delta(pipe, tmp_path, names=None, r_max=4):
    """SEMU layers from a random 'gradient', random R, exported to a delta file; returns (path, merged unet)."""
    unet = pipe.unet
    names = names or select_targets(unet, recipe_for(unet.config).include)
    g = torch.Generator().manual_seed(1)
    grads = {n: _low_rank_grad(unet.get_submodule(n).weight.shape, 1 + i % 5, g) for i, n in enumerate(names)}
    m = get_method("semu")(MethodConfig(tau=0.999, r_max=r_max))
    m.setup(unet, names, grads)
    for layer in m.layers.values():
        layer.R.data = torch.randn(layer.R.shape, generator=g) * 0.05
    delta = m.export(unet)
    merged = copy.deepcopy(unet)
    for n in names:
        merged.get_submodule(n).merge()
    m.restore(unet)
    fp = fingerprint(unet, names)
    path = save_delta(tmp_path / "d.safetensors", delta, {"method": "semu", "base_model": "random", "base_fingerprint": fp})
    return path, merged, delta


def test_layer_types_covered(random_pipe):
    unet = random_pipe.unet
    assert isinstance(unet.get_submodule(LINEAR), torch.nn.Linear)
    assert unet.get_submodule(CONV1x1).kernel_size == (1, 1)
    assert unet.get_submodule(CONV3x3).kernel_size == (3, 3)


def test_semu_layer_forward_equals_merged_weight(random_pipe, tmp_path):
    unet = random_pipe.unet
    names = [LINEAR, CONV1x1, CONV3x3]
    g = torch.Generator().manual_seed(3)
    grads = {n: torch.randn(unet.get_submodule(n).weight.shape, generator=g) for n in names}
    m = get_method("semu")(MethodConfig(tau=0.9, r_max=4))
    m.setup(unet, names, grads)
    for layer in m.layers.values():
        layer.R.data = torch.randn(layer.R.shape, generator=g) * 0.1
    y_unmerged = _unet_out(unet)
    for layer in m.layers.values():
        layer.merge()
    y_merged = _unet_out(unet)
    assert torch.allclose(y_unmerged, y_merged, rtol=1e-4, atol=1e-5)
    w_merged = {n: m.layers[n].base.weight.clone() for n in names}
    for layer in m.layers.values():
        layer.unmerge()
    for n in names:
        assert not torch.allclose(w_merged[n], m.layers[n].base.weight)


def test_diffusers_load_lora_matches_merged(random_pipe, tmp_path):
    unet = random_pipe.unet
    w0 = {k: v.clone() for k, v in unet.state_dict().items()}
    names = [LINEAR, CONV1x1, CONV3x3]
    path, merged, delta = _make_delta(random_pipe, tmp_path, names)
    # the base was not modified by making the delta
    for k, v in unet.state_dict().items():
        assert torch.equal(v, w0[k])
    y_ref = _unet_out(merged)
    y_base = _unet_out(unet)
    _stock_load(random_pipe, path, "semu")
    y_lora = _unet_out(unet)
    rel = ((y_lora - y_ref).norm() / y_ref.norm()).item()
    assert rel <= 1e-5, rel
    assert ((y_base - y_ref).norm() / y_ref.norm()).item() > 1e-3  # the delta matters
    # per-layer: peft's delta weight equals B @ A for each layer type
    for n in names:
        lin = unet.get_submodule(n)
        dw = lin.get_delta_weight("semu")
        ref = delta.delta_weight(n).reshape(dw.shape)
        assert torch.allclose(dw, ref, rtol=1e-5, atol=1e-7), n
    # strength 0.5 -> W0 + 0.5 dW
    random_pipe.set_adapters(["semu"], adapter_weights=[0.5])
    random_pipe.fuse_lora(adapter_names=["semu"], lora_scale=1.0)
    for n in names:
        w = unet.get_submodule(n).base_layer.weight
        exp = w0[n + ".weight"] + 0.5 * delta.delta_weight(n).reshape(w.shape)
        assert torch.allclose(w, exp, rtol=1e-5, atol=1e-6), n
    random_pipe.unfuse_lora()
    random_pipe.unload_lora_weights()
    for k, v in unet.state_dict().items():
        assert torch.allclose(v, w0[k], atol=1e-6), k
    y_after = _unet_out(unet)
    assert torch.allclose(y_after, y_base, atol=1e-5)


def test_unload_restores_exactly_without_fuse(random_pipe, tmp_path):
    unet = random_pipe.unet
    w0 = {k: v.clone() for k, v in unet.state_dict().items()}
    path, _, _ = _make_delta(random_pipe, tmp_path)
    name = load_delta(random_pipe, path, strength=1.0)
    assert name in random_pipe.get_active_adapters()
    random_pipe.unload_lora_weights()
    for k, v in unet.state_dict().items():
        assert torch.equal(v, w0[k]), k


def test_full_target_set_and_mixed_ranks_load(random_pipe, tmp_path):
    """All toy-preset targets, ranks differing per layer: rank_pattern metadata makes diffusers scale correctly."""
    path, merged, delta = _make_delta(random_pipe, tmp_path, r_max=6)
    assert len(set(delta.ranks.values())) > 1
    y_ref = _unet_out(merged)
    load_delta(random_pipe, path)
    y = _unet_out(random_pipe.unet)
    assert ((y - y_ref).norm() / y_ref.norm()).item() <= 1e-5


def test_kohya_export_loads_in_diffusers(random_pipe, tmp_path):
    path, merged, delta = _make_delta(random_pipe, tmp_path, [LINEAR, CONV3x3])
    k = to_kohya(path, tmp_path / "kohya.safetensors")
    from safetensors import safe_open

    with safe_open(str(k), "pt") as f:
        keys = list(f.keys())
    assert any(x.endswith(".alpha") for x in keys) and all(x.startswith("lora_unet_") for x in keys)
    _stock_load(random_pipe, k, "kohya")
    y = _unet_out(random_pipe.unet)
    y_ref = _unet_out(merged)
    assert ((y - y_ref).norm() / y_ref.norm()).item() <= 1e-5


def test_kohya_copy_equals_main_file_through_diffusers_converter(random_pipe, tmp_path):
    """All targets (attention + conv), mixed ranks: diffusers' kohya converter gives exactly the main file's UNet."""
    path, merged, delta = _make_delta(random_pipe, tmp_path, r_max=6)
    assert len(set(delta.ranks.values())) > 1
    k = to_kohya(path, tmp_path / "kohya.safetensors")
    from safetensors import safe_open

    with safe_open(str(k), "pt") as f:
        alphas = {float(f.get_tensor(x)) for x in f.keys() if x.endswith(".alpha")}
        ranks = {f.get_tensor(x).shape[0] for x in f.keys() if x.endswith(".lora_down.weight")}
    R = max(delta.ranks.values())
    assert alphas == {float(R)} and ranks == {R}  # one uniform rank, alpha = rank: no per-module alpha needed
    _stock_load(random_pipe, path, "main")
    y_main = _unet_out(random_pipe.unet)
    random_pipe.unload_lora_weights()
    _stock_load(random_pipe, k, "kohya")
    y_kohya = _unet_out(random_pipe.unet)
    y_ref = _unet_out(merged)
    assert ((y_kohya - y_main).norm() / y_main.norm()).item() <= 1e-6
    assert ((y_kohya - y_ref).norm() / y_ref.norm()).item() <= 1e-5
    for n in delta.modules():  # and per module: the converter's delta weight is B @ A at scale 1
        dw = random_pipe.unet.get_submodule(n).get_delta_weight("kohya")
        assert torch.allclose(dw, delta.delta_weight(n).reshape(dw.shape), rtol=1e-5, atol=1e-7), n


def test_mixed_delta_passes_lora_metadata(random_pipe, tmp_path):
    """A delta with dense and mixed-rank LoRA parts loads at scale 1 per module (metadata handed to diffusers)."""
    from semu_diffusion.methods.base import Delta

    path, merged, delta = _make_delta(random_pipe, tmp_path, r_max=6)
    assert len(set(delta.ranks.values())) > 1
    unet = random_pipe.unet
    g = torch.Generator().manual_seed(5)
    dense_name = CONV3x3
    B, A = delta.lora.pop(dense_name)
    delta.ranks.pop(dense_name)
    dw = (B.reshape(B.shape[0], -1) @ A.reshape(A.shape[0], -1)).reshape(unet.get_submodule(dense_name).weight.shape)
    dw = dw + 0.01 * torch.randn(dw.shape, generator=g)
    mixed = Delta(format="mixed", lora=delta.lora, dense={dense_name: dw}, ranks=delta.ranks)
    mpath = save_delta(tmp_path / "mixed.safetensors", mixed,
                       {"method": "semu", "base_model": "random", "base_fingerprint": fingerprint(unet, mixed.modules())})
    w0 = {k: v.clone() for k, v in unet.state_dict().items()}
    name = load_delta(random_pipe, mpath)
    for n in mixed.lora:
        d = unet.get_submodule(n).get_delta_weight(name)
        assert torch.allclose(d, mixed.delta_weight(n).reshape(d.shape), rtol=1e-5, atol=1e-7), n
    w = unet.get_submodule(dense_name)
    w = getattr(w, "base_layer", w).weight
    assert torch.allclose(w, w0[dense_name + ".weight"] + dw, atol=1e-6)


def test_fused_then_unloaded_keeps_fused_weights(random_pipe, tmp_path):
    """What the README says: fuse_lora() then unload_lora_weights() keeps the erasure; unfuse_lora() first restores."""
    unet = random_pipe.unet
    w0 = unet.get_submodule(LINEAR).weight.detach().clone()
    path, _, delta = _make_delta(random_pipe, tmp_path, [LINEAR])
    load_delta(random_pipe, path)
    random_pipe.fuse_lora()
    random_pipe.unload_lora_weights()
    kept = unet.get_submodule(LINEAR).weight
    assert torch.allclose(kept, w0 + delta.delta_weight(LINEAR), atol=1e-6)


def test_delta_for_other_model_is_refused(random_pipe, tmp_path):
    path, _, _ = _make_delta(random_pipe, tmp_path)
    before = {k: v.clone() for k, v in random_pipe.unet.state_dict().items()}
    with torch.no_grad():
        random_pipe.unet.get_submodule(LINEAR).weight.add_(0.01)  # "another" base model
    with pytest.raises(DeltaError, match="made for base model"):
        load_delta(random_pipe, path)
    assert not random_pipe.get_list_adapters()
    w = random_pipe.unet.get_submodule(LINEAR).weight
    assert torch.allclose(w, before[LINEAR + ".weight"] + 0.01)


def test_bad_files_are_refused(tmp_path, random_pipe):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(DeltaError, match="not a readable safetensors"):
        read_delta(bad)
    pk = tmp_path / "x.ckpt"
    torch.save({"a": torch.zeros(1)}, pk)
    with pytest.raises(DeltaError, match="pickle"):
        read_delta(pk)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(1)}, str(plain))
    with pytest.raises(DeltaError, match="not written by semu-erase"):
        read_delta(plain)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, random_pipe):
    path, _, delta = _make_delta(random_pipe, tmp_path)
    before = path.read_bytes()
    delta.lora[next(iter(delta.lora))] = ("not a tensor", None)
    with pytest.raises(Exception):
        save_delta(path, delta, {"method": "semu"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
