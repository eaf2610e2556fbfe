"""SEMU erasure end to end on a tiny random pipeline: delta written, base untouched, reproducible, bad input refused."""
import json
import os

import pytest
import torch

from semu_diffusion import erase, load_delta
from semu_diffusion.cli import erase_main
from semu_diffusion.delta import read_delta
from semu_diffusion.trainer import TrainingDiverged

FAST = dict(steps=4, forget_n=4, batch_size=2, progress=False)


def _state(unet):
    return {k: v.clone() for k, v in unet.state_dict().items()}


def test_erase_writes_delta_and_leaves_base_untouched(random_pipe, tmp_path):
    w0 = _state(random_pipe.unet)
    out = tmp_path / "star.safetensors"
    res = erase("star", pipe=random_pipe, out=out, log=lambda *a: None, **FAST)
    s = res.stats
    assert out.exists() and s["delta_bytes"] == out.stat().st_size
    assert 0 < s["trainable_params"] and s["trainable_frac"] < 0.01
    assert s["trainable_params"] == sum(r * r for r in res.delta.ranks.values())
    assert s["layers"] == len(res.delta.ranks) and s["rank_min"] >= 1
    for k, v in random_pipe.unet.state_dict().items():
        assert torch.equal(v, w0[k]), k  # in-memory base restored exactly
    assert all(type(m).__name__ in ("Linear", "Conv2d", "LoRACompatibleConv") or not hasattr(m, "R")
               for m in random_pipe.unet.modules())
    d, prov = read_delta(out)
    assert prov["method"] == "semu" and prov["concepts"] == ["star"] and prov["anchor"] == "circle"
    assert prov["base_fingerprint"] and prov["ranks"] == res.delta.ranks
    assert all(B.dtype == torch.float32 for B, A in d.lora.values())
    # training moved R: the delta is non-zero
    assert max(float(B.abs().max()) for B, _ in d.lora.values()) > 0
    load_delta(random_pipe, out)


def test_erase_is_reproducible(random_pipe, tmp_path):
    a = erase("star", pipe=random_pipe, out=tmp_path / "a.safetensors", seed=3, log=lambda *a: None, **FAST)
    b = erase("star", pipe=random_pipe, out=tmp_path / "b.safetensors", seed=3, log=lambda *a: None, **FAST)
    for n in a.delta.lora:
        assert torch.equal(a.delta.lora[n][0], b.delta.lora[n][0])
        assert torch.equal(a.delta.lora[n][1], b.delta.lora[n][1])


def test_bf16_autocast_keeps_trainable_fp32(random_pipe, tmp_path):
    w0 = _state(random_pipe.unet)
    res = erase("star", pipe=random_pipe, out=tmp_path / "bf.safetensors", mixed_precision="bf16",
                log=lambda *a: None, **FAST)
    assert res.stats["mixed_precision"] == "bf16"
    for k, v in random_pipe.unet.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, w0[k]), k
    assert all(B.dtype == torch.float32 for B, _ in res.delta.lora.values())


def test_divergence_stops_without_writing(random_pipe, tmp_path):
    out = tmp_path / "nan.safetensors"
    with pytest.raises(TrainingDiverged, match="no delta was written"):
        erase("star", pipe=random_pipe, out=out, lr=1e25, log=lambda *a: None, **FAST)
    assert not out.exists()


def test_per_channel_conv_mode_writes_dense_updates(random_pipe, tmp_path):
    out = tmp_path / "pc.safetensors"
    erase("star", pipe=random_pipe, out=out, conv_mode="per-channel", log=lambda *a: None, **FAST)
    d, prov = read_delta(out)
    assert d.dense and d.lora  # convs dense, linears LoRA
    assert all(n.endswith(("to_q", "to_k", "to_v", "to_out.0")) for n in d.lora)
    w0 = _state(random_pipe.unet)
    load_delta(random_pipe, out)
    from semu_diffusion.delta import remove_delta

    remove_delta(random_pipe, out)
    for k, v in random_pipe.unet.state_dict().items():
        if "lora" not in k:
            key = k.replace(".base_layer", "")
            assert torch.allclose(v, w0[key], atol=1e-6), k


@pytest.mark.parametrize("args,msg", [
    (["--concept", "  "], "empty --concept"),
    (["--concept", "star", "--model", "/nonexistent/model"], "not found"),
    (["--concept", "star", "--out", "/nonexistent-dir/x.safetensors"], "does not exist"),
    (["--concept", "star", "--out", "x.bin"], "must end in .safetensors"),
    (["--concept", "star", "--method", "nope"], "unknown method"),
])
def test_cli_bad_input_one_line_error(args, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        erase_main(args + ["--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0] and err[0].startswith("semu-erase: error:")
    assert not [p for p in os.listdir(tmp_path) if p.endswith((".safetensors", ".tmp"))]


def test_cli_unwritable_output(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root ignores permissions
        pytest.skip("running as root: permissions are not enforced")
    with pytest.raises(SystemExit):
        erase_main(["--concept", "star", "--out", str(ro / "x.safetensors")])
    assert "not writable" in capsys.readouterr().err


def test_cli_json_on_random_folder(random_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    erase_main(["--concept", "heart", "--model", str(random_pipeline_dir), "--steps", "3", "--forget-n", "2",
                "--batch-size", "2", "--out", str(out), "--json", "--quiet"])
    lines = capsys.readouterr().out.strip().splitlines()
    s = json.loads(lines[-1])
    for k in ("trainable_params", "unet_params", "trainable_frac", "delta_bytes", "seconds", "out"):
        assert k in s
    assert s["out"] == str(out) and out.exists()
    assert "trainable" in lines[-2]


def test_stop_every_ends_training_once_the_judge_finds_the_concept_gone(random_pipe, tmp_path):
    """--stop-every: the judge is asked every k steps and training stops at the first check that passes."""
    kw = dict(FAST, steps=12, stop_judge="toy", stop_samples=2, log=lambda *a: None)
    stopped = erase("star", pipe=random_pipe, out=tmp_path / "s.safetensors", stop_every=4, stop_detection=1.0, **kw)
    assert stopped.stats["steps_run"] == 4 and [s for s, _ in stopped.stats["stop_history"]] == [4]
    assert stopped.provenance["steps_run"] == 4 and stopped.provenance["stop_every"] == 4
    full = erase("star", pipe=random_pipe, **dict(FAST, steps=12, log=lambda *a: None))  # no early stop
    assert full.stats["steps_run"] == 12 and full.stats["stop_history"] is None
    n = next(iter(full.delta.lora))
    assert not torch.equal(stopped.delta.lora[n][0], full.delta.lora[n][0])


def test_retain_aware_subspace_is_used_and_recorded(random_pipe, tmp_path):
    """--retain-energy: a retain set is built even without a retain term, the forget gradient loses the retain
    directions' share of its energy before the SVD, and provenance says so; 0 switches it off."""
    on = erase("star", pipe=random_pipe, retain_energy=0.9, retain_source="gradient", retain_weight=0.0,
               log=lambda *a: None, **FAST)
    info = on.provenance["method_info"]["retain_subspace"]
    assert info["energy"] == 0.9 and info["side"] == "in" and 0 < info["forget_energy_kept_mean"] < 1
    assert on.provenance["choices"]["retain_subspace"].startswith("the retain gradient's leading input directions")
    off = erase("star", pipe=random_pipe, retain_energy=0.0, log=lambda *a: None, **FAST)
    assert "retain_subspace" not in off.provenance["method_info"] and off.provenance["choices"]["retain_subspace"] == "off"
    n = next(iter(on.delta.lora))
    assert not torch.allclose(on.delta.lora[n][1], off.delta.lora[n][1])  # a different input subspace A = V_r^T


def test_input_second_moments_hold_each_layers_retain_inputs(random_pipe):
    """--retain-source activation: the factor S of each target layer satisfies ||S v||^2 = sum ||x . v||^2 over the
    inputs the layer saw (a conv's patches checked through the convolution itself, not through unfold)."""
    import contextlib

    import torch.nn.functional as F

    from semu_diffusion.trainer import Conditioner, TrainConfig, input_second_moments

    unet = random_pipe.unet
    names = [n for n, m in unet.named_modules() if n.endswith("attn2.to_q")][:1] + \
            [n for n, m in unet.named_modules() if n.endswith("resnets.0.conv1")][:1]
    seen = {n: [] for n in names}
    hooks = [unet.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: seen[n].append(a[0].detach()))
             for n in names]
    c = Conditioner(random_pipe, "cpu")
    lat = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    try:
        S = input_second_moments(unet, lat, random_pipe.scheduler.alphas_cumprod, c.embed(["a circle", "a star"]),
                                 c.embed([""]), names, TrainConfig(batch_size=2), "cpu", contextlib.nullcontext, progress=False)
    finally:
        for h in hooks:
            h.remove()
    g = torch.Generator().manual_seed(1)
    for n in names:
        m = unet.get_submodule(n)
        w = m.weight
        assert S[n].shape == (w[0].numel(), w[0].numel())
        assert sum(x.shape[0] for x in seen[n]) == 2 * len(lat)  # conditional and unconditional passes
        for _ in range(3):
            v = torch.randn(w[0].numel(), generator=g)
            if w.dim() == 4:
                ref = sum(F.conv2d(x, v.reshape(1, *w.shape[1:]), None, m.stride, m.padding).pow(2).sum() for x in seen[n])
            else:
                ref = sum((x @ v).pow(2).sum() for x in seen[n])
            torch.testing.assert_close((S[n] @ v).pow(2).sum(), ref, rtol=2e-3, atol=1e-3)


def test_retain_source_activation_changes_the_subspace_and_is_recorded(random_pipe):
    act = erase("star", pipe=random_pipe, retain_energy=0.99, retain_source="activation", retain_weight=0.0,
                log=lambda *a: None, **FAST)
    grad = erase("star", pipe=random_pipe, retain_energy=0.99, retain_source="gradient", retain_weight=0.0,
                 log=lambda *a: None, **FAST)
    assert act.provenance["retain_source"] == "activation" and grad.provenance["retain_source"] == "gradient"
    assert act.provenance["choices"]["retain_subspace"].startswith("the retain set's leading input activation")
    a, b = act.delta.lora, grad.delta.lora
    assert any(a[n][1].shape != b[n][1].shape or not torch.allclose(a[n][1], b[n][1]) for n in a)


def test_retain_estimator_exact_refuses_layers_too_wide_for_a_dense_moment(random_pipe, monkeypatch):
    """Only --retain-estimator exact keeps a d x d moment and refuses wide layers; auto/sketch take any width."""
    from semu_diffusion import api
    from semu_diffusion.config import ConfigError

    monkeypatch.setattr(api, "MAX_ACTIVATION_DIM", 16)
    with pytest.raises(ConfigError, match="--retain-estimator auto"):
        erase("star", pipe=random_pipe, retain_energy=0.99, retain_source="activation", retain_estimator="exact",
              log=lambda *a: None, **FAST)
