"""The base fingerprint: the same base in fp32/fp16/bf16 is accepted in every (erase dtype, load dtype) pair, a
different base (1e-5 relative weight noise) is refused, and the provenance holds no local path."""
import itertools
import json
import os

import pytest
import torch
import torch.nn as nn

from semu_diffusion import load_delta
from semu_diffusion.delta import (DeltaError, check_base, fingerprint, legacy_fingerprint, public_provenance,
                                  save_delta)
from semu_diffusion.methods.base import Delta
from semu_diffusion.recipes import recipe_for, select_targets
from semu_diffusion.validate import validate_delta

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PAIRS = list(itertools.product(DTYPES, DTYPES))


@pytest.fixture(scope="module")
def toy_pipes(toy_available):
    from semu_diffusion.loading import load_pipeline

    return {k: load_pipeline("toy", dtype=dt) for k, dt in DTYPES.items()}


@pytest.fixture(scope="module")
def targets(toy_pipes):
    unet = toy_pipes["fp32"].unet
    return select_targets(unet, recipe_for(unet.config).include)


def _lora_delta(unet, names, rank=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = Delta(format="lora")
    for n in names:
        w = unet.get_submodule(n).weight
        A = torch.randn((rank, *w.shape[1:]), generator=g) * 0.01
        B = torch.randn((w.shape[0], rank, *([1, 1] if w.dim() == 4 else [])), generator=g) * 0.01
        d.lora[n], d.ranks[n] = (B, A), rank
    return d


def _write(tmp_path, unet, names, tag):
    """What erase() does at the end: fingerprint the (restored) base in its dtype, save the delta with provenance."""
    prov = {"method": "semu", "base_model": "toy", "base_fingerprint": fingerprint(unet, names)}
    return save_delta(tmp_path / f"{tag}.safetensors", _lora_delta(unet, names), prov)


@pytest.fixture(scope="module")
def deltas(toy_pipes, targets, tmp_path_factory):
    d = tmp_path_factory.mktemp("fp")
    return {k: _write(d, p.unet, targets, f"erase-{k}") for k, p in toy_pipes.items()}


@pytest.mark.parametrize("erase_dtype,load_dtype", PAIRS)
def test_same_base_accepted_in_every_dtype_pair(toy_pipes, deltas, targets, erase_dtype, load_dtype):
    pipe = toy_pipes[load_dtype]
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    delta, prov = validate_delta(deltas[erase_dtype], pipe)
    assert prov["base_signature"]["modules"][0][2] == str(DTYPES[erase_dtype]).replace("torch.", "")
    assert check_base(pipe.unet, prov, delta.modules()) == "signature"
    name = load_delta(pipe, deltas[erase_dtype])
    assert name in pipe.get_list_adapters()["unet"]
    pipe.unload_lora_weights()
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.fixture(scope="module")
def fp32_base(random_pipeline_dir):
    """A base whose weights are genuinely fp32 (the toy's are fp16-exact, so 1e-5 noise vanishes in fp16 there)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(random_pipeline_dir / "unet")
    return unet, select_targets(unet, recipe_for(unet.config).include)


def _noised(unet, names, rel, seed=7):
    import copy

    u = copy.deepcopy(unet)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in names:
            w = u.get_submodule(n).weight
            w.mul_(1 + rel * torch.randn(w.shape, generator=g))
    return u


@pytest.mark.parametrize("erase_dtype,load_dtype", PAIRS)
def test_noised_base_refused(fp32_base, tmp_path, erase_dtype, load_dtype):
    """1e-5 relative noise on fp32 weights: refused in every pair except fp16 against bf16 (whose roundings hide
    it: a bf16 tie is an fp16 grid point); 1e-3 relative noise is refused there too. The same base is accepted."""
    import copy

    unet, names = fp32_base  # never cast in place: .to(dtype) on the fixture would round it for later cases
    path = _write(tmp_path, copy.deepcopy(unet).to(DTYPES[erase_dtype]), names, "d")
    validate_delta(path, copy.deepcopy(unet).to(DTYPES[load_dtype]))
    rel = 1e-3 if {erase_dtype, load_dtype} == {"fp16", "bf16"} else 1e-5
    other = _noised(unet, names, rel).to(DTYPES[load_dtype])
    with pytest.raises(DeltaError, match="made for base model 'toy', not this one"):
        validate_delta(path, other)


def test_toy_noised_base_refused_in_fp32(toy_pipes, deltas, targets):
    other = _noised(toy_pipes["fp32"].unet, targets, 1e-5)
    with pytest.raises(DeltaError, match=r"not this one \(\d+ of \d+ sampled base weights differ"):
        validate_delta(deltas["fp32"], other)


def test_other_base_refused_with_message(toy_pipes, deltas, random_pipe):
    with pytest.raises(DeltaError, match="made for|does not have|do not fit"):
        validate_delta(deltas["fp32"], random_pipe)


def _values_at_boundaries() -> torch.Tensor:
    """fp32 values on and next to rounding boundaries of fp16 and bf16: ties, binade edges, subnormals, zero."""
    vals = [0.0, -0.0, 1.0, -1.0, 2.0 ** -14, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 1e-9, 1e-30, 6e-8, 65504.0 / 8]
    for base in (1.0, 0.75, 2.0 ** -10, 0.0173, 3.3):
        for ulp_bits in (8, 11):  # bf16 (8 significant bits) and fp16 (11) ties just above base
            mid = base * (1 + 2.0 ** -ulp_bits)
            for delta in (-1, 0, 1):
                v = torch.tensor(mid, dtype=torch.float32)
                v = torch.nextafter(v, torch.tensor(float("inf"))) if delta > 0 else (
                    torch.nextafter(v, torch.tensor(-float("inf"))) if delta < 0 else v)
                vals += [float(v), -float(v)]
        below = torch.nextafter(torch.tensor(2.0 ** -3, dtype=torch.float32), torch.tensor(0.0))  # rounds up a binade
        vals += [float(below), float(torch.tensor(2.0 ** -3) * (1 - 2.0 ** -9))]
    g = torch.Generator().manual_seed(0)
    vals += (torch.randn(2000, generator=g) * 0.05).tolist() + (torch.randn(500, generator=g) * 1e-6).tolist()
    return torch.tensor(vals, dtype=torch.float32)


@pytest.mark.parametrize("erase_dtype,load_dtype", PAIRS)
def test_boundary_values_never_flip(erase_dtype, load_dtype):
    v = _values_at_boundaries()
    lin = nn.Linear(v.numel(), 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(v[None])
    src = nn.Sequential(lin)
    a = src.to(DTYPES[erase_dtype])
    fp = fingerprint(a, ["0"])
    assert fp.signature["modules"][0][3] == min(v.numel(), 1024)
    b = nn.Sequential(nn.Linear(v.numel(), 1, bias=False))
    with torch.no_grad():
        b[0].weight.copy_(v[None])
    b = b.to(DTYPES[load_dtype])
    assert check_base(b, {"base_signature": fp.signature}, ["0"]) == "signature"


def test_legacy_fingerprint_still_checked(toy_pipes, targets, tmp_path):
    """Deltas written before signatures (fp16-rounded hash only) still load in fp32/fp16 and still refuse."""
    unet = toy_pipes["fp32"].unet
    path = save_delta(tmp_path / "old.safetensors", _lora_delta(unet, targets),
                      {"method": "semu", "base_model": "toy", "base_fingerprint": legacy_fingerprint(unet, targets)})
    _, prov = validate_delta(path, unet)
    assert "base_signature" not in prov
    validate_delta(path, toy_pipes["fp16"].unet)
    with pytest.raises(DeltaError, match="load the model in torch.float16 or torch.float32"):
        validate_delta(path, toy_pipes["bf16"].unet)


def test_fingerprint_required_unless_allowed(toy_pipes, targets, tmp_path):
    unet = toy_pipes["fp32"].unet
    path = save_delta(tmp_path / "nofp.safetensors", _lora_delta(unet, targets), {"method": "semu"})
    w0 = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(DeltaError, match="no base fingerprint.*allow_unverified"):
        load_delta(toy_pipes["fp32"], path)
    assert not toy_pipes["fp32"].get_list_adapters()
    assert all(torch.equal(v, w0[k]) for k, v in unet.state_dict().items())
    with pytest.raises(DeltaError, match="no base fingerprint"):
        validate_delta(path)
    validate_delta(path, unet, allow_unverified=True)


# ------------------------------------------------------------------------------------------ provenance privacy
def test_provenance_has_no_local_paths(tmp_path):
    home = os.path.expanduser("~")
    prov = {"base_model": f"{home}/models/my-sd15", "forget_images": str(tmp_path / "nudes"),
            "forget_prompts": ["a photo of a star"], "method_options": {"mask_file": str(tmp_path)}}
    out = public_provenance(prov, keep_local_paths=False)
    assert out["base_model"] == "my-sd15" and out["forget_images"] == "nudes"
    assert out["method_options"]["mask_file"] == tmp_path.name
    assert out["forget_prompts"] == ["a photo of a star"]
    cache = f"{home}/.cache/huggingface/hub/models--stabilityai--stable-diffusion-2-1/snapshots/0123abc"
    assert public_provenance({"base_model": cache}, False)["base_model"] == "stabilityai/stable-diffusion-2-1"
    assert public_provenance({"base_model": "runwayml/stable-diffusion-v1-5"}, False)["base_model"] == "runwayml/stable-diffusion-v1-5"
    assert public_provenance(prov, keep_local_paths=True) == prov  # the opt-in keeps them


def test_saved_delta_and_loaded_model_id_hold_no_path(random_pipe, random_pipeline_dir, tmp_path, monkeypatch):
    assert random_pipe.semu_model_id == random_pipeline_dir.name  # the folder's name, not where it lies
    assert str(random_pipe.semu_model_path) == str(random_pipeline_dir)
    unet = random_pipe.unet
    names = select_targets(unet, recipe_for(unet.config).include)[:2]
    prov = {"method": "semu", "base_model": str(random_pipeline_dir), "forget_images": str(tmp_path),
            "base_fingerprint": fingerprint(unet, names)}
    monkeypatch.delenv("SEMU_PROVENANCE_LOCAL_PATHS", raising=False)
    p = save_delta(tmp_path / "d.safetensors", _lora_delta(unet, names), prov)
    from safetensors import safe_open

    with safe_open(str(p), "pt") as f:
        header = json.dumps(f.metadata())
    assert str(tmp_path) not in header and str(random_pipeline_dir.parent) not in header
    assert os.path.expanduser("~") not in header or os.path.expanduser("~") == "/"
    monkeypatch.setenv("SEMU_PROVENANCE_LOCAL_PATHS", "1")
    p2 = save_delta(tmp_path / "d2.safetensors", _lora_delta(unet, names), prov)
    _, prov2 = validate_delta(p2, unet)
    assert prov2["base_model"] == str(random_pipeline_dir)
