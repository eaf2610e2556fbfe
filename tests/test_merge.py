"""Stacking and merging deltas: load_deltas, stock diffusers set_adapters, merge_deltas / semu-merge exactness."""
import json

import pytest
import torch

from semu_diffusion import load_deltas, merge_deltas
from semu_diffusion.delta import DeltaError, fingerprint, read_delta, save_delta
from semu_diffusion.methods.base import Delta
from conftest import unet_out as _unet_out

LINEAR = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
LINEAR2 = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q"
CONV1x1 = "down_blocks.0.attentions.0.proj_in"
CONV3x3 = "down_blocks.1.resnets.0.conv1"


def _factors(w, r, g, scale=0.05):
    out = w.shape[0]
    B = torch.randn(out, r, generator=g) * scale
    A = torch.randn(r, *w.shape[1:], generator=g)
    if w.dim() == 4:
        B = B[:, :, None, None]
    return B, A


def _write(pipe, path, concept, anchor, mods, seed, dense=(), ranks=None):
    """A delta with random LoRA factors on ``mods`` (ranks from ``ranks``) and dense updates on ``dense``."""
    unet = pipe.unet
    g = torch.Generator().manual_seed(seed)
    d = Delta(format="lora")
    for i, n in enumerate(mods):
        w = unet.get_submodule(n).weight
        r = (ranks or {}).get(n, 1 + (seed + i) % 3)
        d.lora[n] = _factors(w, r, g)
        d.ranks[n] = r
    for n in dense:
        w = unet.get_submodule(n).weight
        d.dense[n] = torch.randn(w.shape, generator=g) * 0.01
    if d.dense:
        d.format = "mixed" if d.lora else "dense"
    fp = fingerprint(unet, d.modules())
    return save_delta(path, d, {"method": "semu", "base_model": "random", "base_fingerprint": fp,
                                "concepts": [concept], "anchor": anchor, "kind": "object"}), d


def _reference(unet, deltas_weights):
    """UNet output with W0 + sum_i w_i dW_i written into the weights (then restored)."""
    saved = {}
    with torch.no_grad():
        for d, w in deltas_weights:
            for n in d.modules():
                p = unet.get_submodule(n).weight
                saved.setdefault(n, p.detach().clone())
                p.add_(w * d.delta_weight(n).reshape(p.shape))
    y = _unet_out(unet)
    with torch.no_grad():
        for n, v in saved.items():
            unet.get_submodule(n).weight.copy_(v)
    return y


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_stacked_adapters_equal_weighted_sum_and_merge_is_exact(random_pipe, tmp_path):
    unet = random_pipe.unet
    pa, da = _write(random_pipe, tmp_path / "a.safetensors", "triangle", "circle", [LINEAR, CONV3x3, CONV1x1], 1)
    pb, db = _write(random_pipe, tmp_path / "b.safetensors", "star", "square", [LINEAR, LINEAR2, CONV3x3], 2)
    w = [1.0, 0.5]
    y_base = _unet_out(unet)
    y_ref = _reference(unet, [(da, w[0]), (db, w[1])])
    assert _rel(y_base, y_ref) > 1e-3  # the deltas matter
    # stock diffusers: two named adapters, activated together with weights
    random_pipe.load_lora_weights(str(tmp_path), weight_name="a.safetensors", adapter_name="a")
    random_pipe.load_lora_weights(str(tmp_path), weight_name="b.safetensors", adapter_name="b")
    random_pipe.set_adapters(["a", "b"], adapter_weights=w)
    y_stock = _unet_out(unet)
    assert _rel(y_stock, y_ref) <= 1e-5
    random_pipe.unload_lora_weights()
    assert torch.allclose(_unet_out(unet), y_base, atol=1e-6)
    # the toolkit's multi-file loader (validates each file first)
    names = load_deltas(random_pipe, [pa, pb], w)
    assert names == ["semu_a", "semu_b"]
    assert set(random_pipe.get_active_adapters()) == set(names)
    y_stack = _unet_out(unet)
    assert _rel(y_stack, y_ref) <= 1e-5
    random_pipe.unload_lora_weights()
    # merged file == stacked adapters
    out = merge_deltas([pa, pb], tmp_path / "ab.safetensors", w)
    md, prov = read_delta(out)
    assert md.ranks[LINEAR] == da.ranks[LINEAR] + db.ranks[LINEAR]  # concatenated factors
    assert md.ranks[CONV1x1] == da.ranks[CONV1x1] and md.ranks[LINEAR2] == db.ranks[LINEAR2]
    assert prov["concepts"] == ["triangle", "star"] and prov["anchors"] == ["circle", "square"]
    assert prov["merge"]["exact"] and [s["weight"] for s in prov["merge"]["sources"]] == w
    assert [s["file"] for s in prov["merge"]["sources"]] == ["a.safetensors", "b.safetensors"]
    from semu_diffusion import load_delta

    load_delta(random_pipe, out)  # the merged file passes validation (union base signature) on this model
    y_merged = _unet_out(unet)
    assert _rel(y_merged, y_stack) <= 1e-5
    assert _rel(y_merged, y_ref) <= 1e-5
    random_pipe.unload_lora_weights()
    # per module: merged dW == w1 dW1 + w2 dW2
    for n in md.modules():
        exp = sum(wi * d.delta_weight(n) for d, wi in ((da, w[0]), (db, w[1])) if n in d.modules())
        assert torch.allclose(md.delta_weight(n), exp, atol=1e-6), n


def test_dense_and_full_rank_parts_merge_exactly(random_pipe, tmp_path):
    unet = random_pipe.unet
    w = unet.get_submodule(LINEAR2).weight
    full = min(w.shape[0], w.shape[1])
    big = {LINEAR2: full - 1}  # two of these exceed the full rank: refactored exactly by SVD
    pa, da = _write(random_pipe, tmp_path / "a.safetensors", "heart", "circle", [LINEAR2, LINEAR], 3, ranks=big)
    pb, db = _write(random_pipe, tmp_path / "b.safetensors", "ring", "circle", [LINEAR2], 4, dense=[LINEAR, CONV3x3],
                    ranks=big)
    y_ref = _reference(unet, [(da, 1.0), (db, -0.7)])
    out = merge_deltas([pa, pb], tmp_path / "m.safetensors", [1.0, -0.7])
    md, prov = read_delta(out)
    assert md.ranks[LINEAR2] == full and prov["merge"]["refactored_modules"] == [LINEAR2]
    assert set(md.dense) == {LINEAR, CONV3x3} and md.format == "mixed"  # LoRA + dense on one module -> dense
    assert prov["merge"]["exact"]
    load_deltas(random_pipe, [out])
    assert _rel(_unet_out(unet), y_ref) <= 1e-5
    # max_rank truncates (lossy) and records the error
    lossy = merge_deltas([pa, pb], tmp_path / "l.safetensors", [1.0, -0.7], max_rank=2)
    ld, lp = read_delta(lossy)
    assert ld.ranks[LINEAR2] == 2 and not lp["merge"]["exact"] and lp["merge"]["max_rel_error"] > 0.01


def test_bad_input_is_refused_and_nothing_changes(random_pipe, tmp_path):
    unet = random_pipe.unet
    pa, _ = _write(random_pipe, tmp_path / "a.safetensors", "triangle", "circle", [LINEAR], 1)
    pb, _ = _write(random_pipe, tmp_path / "b.safetensors", "star", "circle", [LINEAR2], 2)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    y0 = _unet_out(unet)
    out = tmp_path / "m.safetensors"
    cases = [
        (lambda: merge_deltas([pa, pb], out, [1.0]), "one weight per file"),
        (lambda: merge_deltas([pa, pa], out), "listed twice"),
        (lambda: merge_deltas([pa, pb], out, [1.0, float("nan")]), "finite"),
        (lambda: merge_deltas([pa, pb], pa), "is one of the inputs"),
        (lambda: merge_deltas([pa, bad], out), "bad.safetensors"),
        (lambda: merge_deltas([pa, pb], tmp_path / "m.txt"), ".safetensors"),
        (lambda: merge_deltas([], out), "at least one"),
        (lambda: merge_deltas(str(pa), out), "list of paths"),
        (lambda: load_deltas(random_pipe, [pa, bad]), "bad.safetensors"),
        (lambda: load_deltas(random_pipe, [pa, pb], [1, 2, 3]), "one weight per file"),
        (lambda: load_deltas(random_pipe, [pa, pb], adapter_names=["x", "x"]), "distinct"),
    ]
    for fn, msg in cases:
        with pytest.raises(DeltaError, match=msg.replace(".", r"\.")) as e:
            fn()
        assert "\n" not in str(e.value)
    assert not out.exists() and not (tmp_path / "m.txt").exists()
    assert not random_pipe.get_list_adapters().get("unet")  # nothing loaded by the refused load_deltas
    assert torch.equal(_unet_out(unet), y0)
    # another base model: shapes agree, weights do not
    other = tmp_path / "other.safetensors"
    with torch.no_grad():
        unet.get_submodule(LINEAR2).weight.mul_(1.01)
    po, _ = _write(random_pipe, other, "star", "circle", [LINEAR, LINEAR2], 5)
    with torch.no_grad():
        unet.get_submodule(LINEAR2).weight.div_(1.01)
    with pytest.raises(DeltaError):
        load_deltas(random_pipe, [pa, po])
    with pytest.raises(DeltaError, match="made for another base model"):
        merge_deltas([pb, po], out)
    assert not out.exists()


def test_semu_merge_cli(random_pipe, tmp_path, capsys):
    from semu_diffusion.cli import merge_main

    pa, _ = _write(random_pipe, tmp_path / "a.safetensors", "triangle", "circle", [LINEAR, CONV3x3], 1)
    pb, _ = _write(random_pipe, tmp_path / "b.safetensors", "star", "square", [LINEAR], 2)
    out = tmp_path / "m.safetensors"
    merge_main([str(pa), str(pb), "--out", str(out), "--weights", "1,0.5", "--json"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["concepts"] == ["triangle", "star"] and last["merge"]["exact"]
    assert out.exists()
    for args, msg in [([str(pa), str(pb), "--out", str(tmp_path / "x.safetensors"), "--weights", "1,a"], "--weights"),
                      ([str(pa), str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "x.safetensors")],
                       "missing.safetensors")]:
        with pytest.raises(SystemExit) as e:
            merge_main(args)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("semu-merge: error:") and msg in err and "\n" not in err
    assert not (tmp_path / "x.safetensors").exists()
