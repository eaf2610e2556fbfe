"""--save-dtype: fp16/bf16 factors, recorded in the provenance, validated, and loaded by stock diffusers into
fp32/fp16/bf16 pipelines with the fp32 delta's output up to fp16 rounding of the factors."""
import pytest
import torch

from semu_diffusion.delta import DeltaError, fingerprint, read_delta, save_delta
from semu_diffusion.validate import validate_delta
from test_delta_export import _make_delta

X_SEED = 0


def _inputs(dtype):
    g = torch.Generator().manual_seed(X_SEED)
    x = torch.randn(2, 4, 8, 8, generator=g)
    e = torch.randn(2, 32, 64, generator=g)
    return x.to(dtype), torch.tensor([10, 500]), e.to(dtype)


def _out(pipe, dtype):
    x, t, e = _inputs(dtype)
    with torch.no_grad():
        return pipe.unet(x, t, encoder_hidden_states=e).sample.float()


def test_fp16_delta_is_half_the_size_records_its_dtype_and_validates(random_pipe, tmp_path):
    p32, _, delta = _make_delta(random_pipe, tmp_path)
    fp = fingerprint(random_pipe.unet, delta.modules())
    sizes = {"fp32": p32.stat().st_size}
    for dt, tdt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        p = save_delta(tmp_path / f"d-{dt}.safetensors", delta, {"method": "semu", "base_fingerprint": fp}, dtype=dt)
        sizes[dt] = p.stat().st_size
        from safetensors import safe_open

        with safe_open(str(p), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {tdt}
        d, prov = validate_delta(p, random_pipe)
        assert prov["save_dtype"] == dt
        n = next(iter(d.lora))
        B, A = d.lora[n]
        # the factors read back are the fp32 ones rounded to dt (relative error <= half an ulp of dt)
        eps = torch.finfo(tdt).eps
        assert torch.allclose(A, delta.lora[n][1], rtol=eps, atol=0) and A.dtype == torch.float32
    # tensor bytes halve; the header (provenance, fingerprint sample) is the same
    assert sizes["fp16"] < 0.75 * sizes["fp32"] and abs(sizes["fp16"] - sizes["bf16"]) < 1024
    assert read_delta(p32)[1]["save_dtype"] == "fp32"
    with pytest.raises(DeltaError, match="save dtype"):
        save_delta(tmp_path / "x.safetensors", delta, {"method": "semu"}, dtype="fp8")


def test_fp16_factor_that_overflows_is_refused(random_pipe, tmp_path):
    _, _, delta = _make_delta(random_pipe, tmp_path)
    n = next(iter(delta.lora))
    B, A = delta.lora[n]
    delta.lora[n] = (B / B.abs().max() * 1e6, A)
    with pytest.raises(DeltaError, match="overflows fp16"):
        save_delta(tmp_path / "big.safetensors", delta, {"method": "semu"}, dtype="fp16")
    # bf16 has fp32's range, but no weight update is that large: the one value check refuses it before writing
    with pytest.raises(DeltaError, match="values up to"):
        save_delta(tmp_path / "big.safetensors", delta, {"method": "semu"}, dtype="bf16")
    assert not (tmp_path / "big.safetensors").exists()


@pytest.mark.parametrize("pipe_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_stock_diffusers_loads_fp16_delta_like_the_fp32_one(random_pipeline_dir, tmp_path, pipe_dtype):
    from diffusers import StableDiffusionPipeline

    from semu_diffusion.loading import load_pipeline

    base = load_pipeline(str(random_pipeline_dir))
    p32, _, delta = _make_delta(base, tmp_path)
    fp = fingerprint(base.unet, delta.modules())
    p16 = save_delta(tmp_path / "d16.safetensors", delta, {"method": "semu", "base_fingerprint": fp}, dtype="fp16")
    pipe = StableDiffusionPipeline.from_pretrained(str(random_pipeline_dir), torch_dtype=pipe_dtype, safety_checker=None)
    plain = _out(pipe, pipe_dtype)
    outs = {}
    for name, path in (("d32", p32), ("d16", p16)):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
        pipe.set_adapters([name])
        outs[name] = _out(pipe, pipe_dtype)
        pipe.unload_lora_weights()
    effect = (outs["d32"] - plain).abs().max()
    assert effect > 1e-2  # the delta changes the output
    diff = (outs["d16"] - outs["d32"]).abs().max()
    # fp16 rounding of the factors moves the update by <= ~2^-11 relative; the pipeline's own dtype adds its
    # rounding of the activations (a few ulps of the output's magnitude)
    scale = outs["d32"].abs().max()
    tol = {torch.float32: 2 ** -9 * effect + 1e-5, torch.float16: 2 ** -9 * effect + 8 * 2 ** -11 * scale,
           torch.bfloat16: 2 ** -9 * effect + 8 * 2 ** -8 * scale}[pipe_dtype]
    assert diff <= tol, (float(diff), float(tol), float(effect))
