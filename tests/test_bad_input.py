"""The bad-input sweep kept as a test: careless and hostile input to load_delta, semu-erase and semu-eval.

Every case must be refused with a one-line error (DeltaError for the library, exit code 2 and one stderr line for the
CLIs) BEFORE any model work: loading a pipeline raises ``ModelWorkStarted`` here, which no handler catches. For
load_delta the pipeline is checked to be untouched after every refusal.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import struct

import pytest
import torch

from semu_diffusion.delta import (LORA_METADATA_KEY, PROVENANCE_KEY, DeltaError, fingerprint, load_delta, save_delta,
                                  to_kohya)
from semu_diffusion.methods.base import Delta
from semu_diffusion.validate import validate_delta

LINEAR = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
CONV1x1 = "down_blocks.0.attentions.0.proj_in"
CONV3x3 = "down_blocks.1.resnets.0.conv1"
NAMES = [LINEAR, CONV1x1, CONV3x3]


class ModelWorkStarted(BaseException):
    """Raised by any pipeline load during a bad-input case: the refusal came too late."""


@pytest.fixture()
def no_model_work(monkeypatch):
    """Any weight loading (pipeline or model) raises ModelWorkStarted; path checks in load_pipeline still run."""
    from diffusers import DiffusionPipeline
    from diffusers.models.modeling_utils import ModelMixin

    def refuse(cls, *a, **k):
        raise ModelWorkStarted("a model was loaded before the bad input was refused")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(ModelMixin, "from_pretrained", classmethod(refuse))


@pytest.fixture(scope="module")
def pipe(random_pipeline_dir):
    from semu_diffusion.loading import load_pipeline

    return load_pipeline(str(random_pipeline_dir))


@pytest.fixture(scope="module")
def good(pipe, tmp_path_factory):
    """A valid delta for ``pipe``: its tensors and headers, from which the bad files are crafted."""
    unet = pipe.unet
    g = torch.Generator().manual_seed(0)
    d = Delta(format="lora")
    for i, n in enumerate(NAMES):
        w = unet.get_submodule(n).weight
        r = 2 + i % 2
        A = torch.randn((r, *w.shape[1:]), generator=g) * 0.05
        B = torch.randn((w.shape[0], r, *([1, 1] if w.dim() == 4 else [])), generator=g) * 0.05
        d.lora[n], d.ranks[n] = (B, A), r
    path = save_delta(tmp_path_factory.mktemp("good") / "good.safetensors", d,
                      {"method": "semu", "base_model": "random", "ranks": dict(d.ranks),
                       "base_fingerprint": fingerprint(unet, d.modules())})
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    return path, tensors, meta


def _snapshot(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def _untouched(pipe, snap):
    try:
        adapters = pipe.get_list_adapters()
    except Exception:
        adapters = {}
    assert not any(adapters.values()), adapters
    now = pipe.unet.state_dict()
    assert set(now) == set(snap)
    assert all(torch.equal(now[k], snap[k]) for k in snap)


# ---------------------------------------------------------------------------------------------- crafted files
def _save(path, tensors, meta):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return path


def _raw(path, header: bytes, body: bytes = b"", n: int | None = None):
    path.write_bytes(struct.pack("<Q", len(header) if n is None else n) + header + body)
    return path


def _prov_edit(fn):
    """Edit the provenance dict in place (fn's return value is ignored)."""
    def make(tmp, good):
        _, t, m = good
        prov = json.loads(m[PROVENANCE_KEY])
        fn(prov)
        return _save(tmp / "p.safetensors", t, dict(m, **{PROVENANCE_KEY: json.dumps(prov)}))
    return make


def _prov_raw(text):
    """Replace the provenance header by raw text."""
    def make(tmp, good):
        _, t, m = good
        return _save(tmp / "p.safetensors", t, dict(m, **{PROVENANCE_KEY: text}))
    return make


def _bytes(name, data):
    def make(tmp, good):
        (tmp / name).write_bytes(data)
        return tmp / name
    return make


def _tensor_edit(fn):
    def make(tmp, good):
        _, t, m = good
        t = {k: v.clone() for k, v in t.items()}
        m = dict(m)
        fn(t, m)
        return _save(tmp / "t.safetensors", t, m)
    return make


def _meta_edit(fn):
    def make(tmp, good):
        _, t, m = good
        m = dict(m)
        fn(m)
        return _save(tmp / "m.safetensors", t, m)
    return make


def _key(name, part):
    return f"unet.{name}.{part}.weight"


def _set(t, k, v):
    t[k] = v


def _pickle_named_safetensors(tmp, good):
    p = tmp / "pickled.safetensors"
    torch.save({"a": torch.zeros(2)}, str(p))
    return p


def _raw_pickle(tmp, good):
    p = tmp / "raw.safetensors"
    p.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    return p


def _ckpt(tmp, good):
    p = tmp / "x.ckpt"
    torch.save({"a": torch.zeros(1)}, str(p))
    return p


def _kohya_copy(tmp, good):
    return to_kohya(good[0], tmp / "kohya.safetensors")


def _header_json(obj, body=b""):
    return lambda tmp, good: _raw(tmp / "h.safetensors", json.dumps(obj).encode(), body)


def _nested(tmp, good):
    return _raw(tmp / "deep.safetensors", b"[" * 100_000 + b"]" * 100_000)


def _sig_edit(fn):
    def edit(prov):
        fn(prov["base_signature"])
    return _prov_edit(edit)


def _del(d, *ks):
    for k in ks:
        d.pop(k, None)


def _swap_sig_values(sig):
    import base64

    v = torch.frombuffer(bytearray(base64.b64decode(sig["values"])), dtype=torch.float32).clone()
    v[::7] += 0.05  # a base whose weights differ
    sig["values"] = base64.b64encode(v.numpy().tobytes()).decode()


def _lora_meta(fn):
    def edit(m):
        md = json.loads(m[LORA_METADATA_KEY])
        fn(md)
        m[LORA_METADATA_KEY] = json.dumps(md)
    return _meta_edit(edit)


LA, LB = _key(LINEAR, "lora_A"), _key(LINEAR, "lora_B")
CA, CB = _key(CONV3x3, "lora_A"), _key(CONV3x3, "lora_B")

FILE_CASES = {
    # the file
    "missing": (lambda tmp, good: tmp / "nope.safetensors", "not found"),
    "directory": (lambda tmp, good: tmp, "is a folder"),
    "newline_in_file_name": (lambda tmp, good: _save(tmp / "a\nb.safetensors", {"a": torch.zeros(1)}, {}), "not written by"),
    "empty": (_bytes("e.safetensors", b""), "not a readable safetensors"),
    "seven_bytes": (_bytes("s.safetensors", b"\x01" * 7), "not a readable"),
    "garbage": (_bytes("g.safetensors", b"\x00\x01garbage" * 9), "not a readable"),
    "header_len_huge": (lambda tmp, good: _raw(tmp / "h.safetensors", b"{}", n=2**40), "header of .* limit"),
    "header_len_past_end": (lambda tmp, good: _raw(tmp / "h.safetensors", b"{}", n=5000), "truncated header"),
    "header_not_json": (lambda tmp, good: _raw(tmp / "h.safetensors", b"{not json"), "header is not JSON"),
    "header_not_utf8": (lambda tmp, good: _raw(tmp / "h.safetensors", b'{"\xff\xfe": 1}'), "header is not JSON"),
    "header_list": (lambda tmp, good: _raw(tmp / "h.safetensors", b"[1, 2]"), "header is not an object"),
    "header_deep_nesting": (_nested, "not a readable|header"),
    "pickle_ckpt": (_ckpt, "pickle checkpoint"),
    "pickle_named_safetensors": (_pickle_named_safetensors, "pickle checkpoint"),
    "raw_pickle_named_safetensors": (_raw_pickle, "pickle checkpoint"),
    "metadata_not_strings": (_header_json({"__metadata__": {"a": 1}}), "metadata must map strings"),
    "entry_malformed": (_header_json({"unet.x.lora_A.weight": [1, 2]}), "malformed header entry"),
    "dtype_int32": (_header_json({"unet.x.delta_weight": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
                    "must be floating point"),
    "dtype_unknown": (_header_json({"unet.x.delta_weight": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16),
                      "unknown dtype"),
    "shape_negative": (_header_json({"unet.x.delta_weight": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
                       "has shape"),
    "shape_5d": (_header_json({"unet.x.delta_weight": {"dtype": "F32", "shape": [1, 1, 1, 1, 1], "data_offsets": [0, 4]}}, b"\0" * 4),
                 "1 to 4 dimensions"),
    "offsets_past_end": (_header_json({"unet.x.delta_weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 4),
                         "byte offsets"),
    "offsets_inconsistent": (_header_json({"unet.x.delta_weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8),
                             "byte offsets"),
    "plain_safetensors": (lambda tmp, good: _save(tmp / "plain.safetensors", {"a": torch.zeros(1)}, {}), "not written by semu-erase"),
    "kohya_copy": (_kohya_copy, "kohya/A1111"),
    # the provenance header
    "prov_not_json": (_prov_raw("{oops"), "not valid JSON"),
    "prov_json_list": (_prov_raw("[1, 2, 3]"), "JSON list, not an object"),
    "prov_json_string": (_prov_raw('"hello"'), "JSON str, not an object"),
    "prov_version_string": (_prov_edit(lambda p: p.update(format_version="1")), "'format_version' is '1', expected an integer"),
    "prov_version_bool": (_prov_edit(lambda p: p.update(format_version=True)), "'format_version' is True"),
    "prov_version_future": (_prov_edit(lambda p: p.update(format_version=99)), "upgrade semu-diffusion"),
    "prov_version_zero": (_prov_edit(lambda p: p.update(format_version=0)), "does not exist"),
    "prov_version_missing": (_prov_edit(lambda p: p.pop("format_version")), "no 'format_version'"),
    "prov_delta_format_unknown": (_prov_edit(lambda p: p.update(delta_format="zip")), "delta_format 'zip'"),
    "prov_concepts_string": (_prov_edit(lambda p: p.update(concepts="star")), "'concepts' is 'star', expected a list"),
    "prov_ranks_list": (_prov_edit(lambda p: p.update(ranks=[1, 2])), "'ranks'"),
    "prov_tau_string": (_prov_edit(lambda p: p.update(tau="0.9")), "'tau'"),
    "prov_seed_float": (_prov_edit(lambda p: p.update(seed=1.5)), "'seed'"),
    "prov_steps_nan": (_prov_edit(lambda p: p.update(lr=float("nan"))), "'lr'"),
    "prov_method_number": (_prov_edit(lambda p: p.update(method=3)), "'method'"),
    "prov_ranks_disagree": (_prov_edit(lambda p: p["ranks"].update({LINEAR: 7})), "provenance ranks disagree"),
    "sig_not_base64": (_sig_edit(lambda s: s.update(values="!!!not base64")), "not base64"),
    "sig_value_count": (_sig_edit(lambda s: s.update(values=s["values"][:-8])), "base signature is damaged"),
    "sig_bad_version": (_sig_edit(lambda s: s.update(version=9)), "base signature is damaged"),
    "sig_bad_row": (_sig_edit(lambda s: s["modules"][0].__setitem__(2, "int8")), "module entry"),
    "sig_other_base": (_sig_edit(_swap_sig_values), "not this one .* sampled base weights differ"),
    "fingerprint_removed": (_prov_edit(lambda p: _del(p, "base_fingerprint", "base_signature")), "no base fingerprint"),
    "legacy_fingerprint_wrong": (_prov_edit(lambda p: (_del(p, "base_signature"), p.update(base_fingerprint="0" * 32))),
                                 "made for base model"),
    # the LoRA metadata header
    "lora_meta_missing": (_meta_edit(lambda m: m.pop(LORA_METADATA_KEY)), "no lora_adapter_metadata"),
    "lora_meta_not_json": (_meta_edit(lambda m: m.update({LORA_METADATA_KEY: "{"})), "not valid JSON"),
    "lora_meta_alpha_changed": (_lora_meta(lambda md: md.update({"unet.lora_alpha": 64})), "alpha must equal the rank"),
    "lora_meta_rslora": (_lora_meta(lambda md: md.update({"unet.use_rslora": True})), "rsLoRA"),
    "lora_meta_r_string": (_lora_meta(lambda md: md.update({"unet.r": "2"})), "needs integer r"),
    # the tensors
    "nan_in_B": (_tensor_edit(lambda t, m: t[LB].view(-1).__setitem__(0, float("nan"))), "NaN or Inf"),
    "inf_in_A": (_tensor_edit(lambda t, m: t[CA].view(-1).__setitem__(3, float("inf"))), "NaN or Inf"),
    "neg_inf_fp16": (_tensor_edit(lambda t, m: _set(t, LA, torch.full_like(t[LA], -float("inf")).half())), "NaN or Inf"),
    "absurdly_large": (_tensor_edit(lambda t, m: t[LB].mul_(1e7)), "values up to .*limit"),
    "update_too_large_for_module": (_tensor_edit(lambda t, m: (t[LB].fill_(30.0), t[LA].fill_(30.0))), "over 100x the largest base"),
    "int_tensor": (_tensor_edit(lambda t, m: _set(t, LA, torch.ones(t[LA].shape, dtype=torch.int32))), "floating point"),
    "bool_tensor": (_tensor_edit(lambda t, m: _set(t, LB, torch.ones(t[LB].shape, dtype=torch.bool))), "floating point"),
    "transposed_factors": (_tensor_edit(lambda t, m: (_set(t, LA, t[LA].T.contiguous()), _set(t, LB, t[LB].T.contiguous()))),
                           "transposed"),
    "A_without_B": (_tensor_edit(lambda t, m: t.pop(LB)), "lora_A only"),
    "B_without_A": (_tensor_edit(lambda t, m: t.pop(CA)), "lora_B only"),
    "rank_mismatch": (_tensor_edit(lambda t, m: _set(t, LB, torch.zeros(t[LB].shape[0], t[LB].shape[1] + 1))), "same r"),
    "A_three_dims": (_tensor_edit(lambda t, m: _set(t, LA, t[LA][:, :, None].contiguous())), "contract"),
    "rank_zero": (_tensor_edit(lambda t, m: (_set(t, LA, t[LA][:0].contiguous()), _set(t, LB, t[LB][:, :0].contiguous()))),
                  "contract"),
    "key_without_prefix": (_tensor_edit(lambda t, m: _set(t, "text_encoder.x.lora_A.weight", torch.zeros(1, 1))), "unexpected key"),
    "key_unknown_suffix": (_tensor_edit(lambda t, m: _set(t, "unet.x.bias", torch.zeros(1))), "unexpected key"),
    "key_bad_module_name": (_tensor_edit(lambda t, m: _set(t, "unet.a\nb.delta_weight", torch.zeros(1))), "does not name a module"),
    "module_not_in_model": (_tensor_edit(lambda t, m: (_set(t, "unet.no.such.layer.lora_A.weight", torch.zeros(2, 4)),
                                                       _set(t, "unet.no.such.layer.lora_B.weight", torch.zeros(4, 2)))),
                            "does not have"),
    "factors_wrong_in_features": (_tensor_edit(lambda t, m: _set(t, LA, torch.zeros(t[LA].shape[0], t[LA].shape[1] + 8))),
                                  "do not fit this model"),
    "conv_kernel_mismatch": (_tensor_edit(lambda t, m: _set(t, CA, torch.zeros(*t[CA].shape[:2], 1, 1))), "do not fit"),
    "dense_wrong_shape": (_tensor_edit(lambda t, m: _set(t, "unet.up_blocks.0.resnets.0.conv1.delta_weight", torch.zeros(3, 3))),
                          "does not match|delta_format"),
    "lora_and_dense_same_module": (_tensor_edit(lambda t, m: _set(t, f"unet.{LINEAR}.delta_weight", torch.zeros(t[LB].shape[0], t[LA].shape[1]))),
                                   "both LoRA factors and a dense"),
    "no_tensors": (_tensor_edit(lambda t, m: t.clear()), "holds no weight update"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_load_delta_refuses(case, pipe, good, tmp_path):
    make, msg = FILE_CASES[case]
    path = make(tmp_path, good)
    snap = _snapshot(pipe)
    with pytest.raises(DeltaError, match=msg) as e:
        load_delta(pipe, path)
    assert "\n" not in str(e.value) and len(str(e.value)) < 600
    _untouched(pipe, snap)


API_CASES = {
    "strength_nan": (dict(strength=float("nan")), "strength must be a finite number"),
    "strength_inf": (dict(strength=math.inf), "strength must be a finite number"),
    "strength_string": (dict(strength="1"), "strength must be a finite number"),
    "strength_bool": (dict(strength=True), "strength must be a finite number"),
    "strength_huge": (dict(strength=1e6), r"out of range: use a value in \[-10, 10\]"),
    "strength_just_above_bound": (dict(strength=-10.5), "out of range"),
    "path_none": (dict(path=None), "must be a file path"),
    "path_int": (dict(path=3), "must be a file path"),
    "path_empty": (dict(path=""), "must be a file path"),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_load_delta_refuses_bad_arguments(case, pipe, good):
    kw, msg = API_CASES[case]
    kw = dict(kw)
    path = kw.pop("path", good[0])
    snap = _snapshot(pipe)
    with pytest.raises(DeltaError, match=msg):
        load_delta(pipe, path, **kw)
    _untouched(pipe, snap)


def test_good_delta_loads_and_adapter_name_clash_is_refused(pipe, good):
    snap = _snapshot(pipe)
    name = load_delta(pipe, good[0])
    try:
        with pytest.raises(DeltaError, match="already loaded"):
            load_delta(pipe, good[0])
    finally:
        pipe.unload_lora_weights()
    _untouched(pipe, snap)


def test_allow_unverified_is_the_only_way_without_fingerprint(pipe, good, tmp_path):
    path = FILE_CASES["fingerprint_removed"][0](tmp_path, good)
    with pytest.raises(DeltaError, match="allow_unverified"):
        validate_delta(path)
    validate_delta(path, pipe, allow_unverified=True)
    with pytest.raises(DeltaError, match="no base fingerprint"):
        to_kohya(path, tmp_path / "k.safetensors")
    assert not (tmp_path / "k.safetensors").exists()


# --------------------------------------------------------------------------------------------------- the CLIs
def _files(tmp_path, good):
    """Named bad paths the CLI cases refer to as {name}."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "folder").mkdir()
    (d / "images_bad").mkdir()
    (d / "images_bad" / "a.png").write_bytes(b"not a png at all")
    (d / "images_empty").mkdir()
    (d / "file.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    (d / "prompts.txt").write_text("a photo of a star\n")
    (d / "latin1.txt").write_bytes("caf\xe9 star\n".encode("latin-1"))
    (d / "empty.txt").write_text("\n# only a comment\n")
    (d / "nan.safetensors").write_bytes(FILE_CASES["nan_in_B"][0](d, good).read_bytes())
    (d / "nofp.safetensors").write_bytes(FILE_CASES["fingerprint_removed"][0](d, good).read_bytes())
    (d / "x.ckpt").write_bytes(b"\x80\x04junk")
    (d / "outfile").write_text("")
    (d / "good.safetensors").write_bytes(good[0].read_bytes())
    (d / "newline.csv").write_text('concept,kind\n"tri\nangle",object\nstar,object\n')
    (d / "many.txt").write_text("".join(f"concept {i}\n" for i in range(10_000)))
    names = {"dir": d / "folder", "images_bad": d / "images_bad", "images_empty": d / "images_empty",
             "imagefile": d / "file.png", "prompts": d / "prompts.txt", "latin1": d / "latin1.txt",
             "empty_prompts": d / "empty.txt", "nan_delta": d / "nan.safetensors", "nofp_delta": d / "nofp.safetensors",
             "pickle": d / "x.ckpt", "missing": d / "missing" / "x", "outfile": d / "outfile", "tmp": tmp_path,
             "good": d / "good.safetensors", "newline_csv": d / "newline.csv", "many_concepts": d / "many.txt"}
    return {k: str(v) for k, v in names.items()}


PENDING_ERASE = pytest.mark.xfail(strict=False, reason="validation pending in semu_diffusion/config.py / cli.py erase_main")
PENDING_EVAL = pytest.mark.xfail(strict=False, reason="validation pending in semu_diffusion/evaluation/options.py / cli.py eval_main")

ERASE_CASES = {
    "steps_negative": ["--steps", "-3"],
    "steps_zero": ["--steps", "0"],
    "steps_absurd": ["--steps", "10000000"],
    "lr_nan": ["--lr", "nan"],
    "lr_negative": ["--lr", "-1e-4"],
    "lr_inf": ["--lr", "inf"],
    "tau_zero": ["--tau", "0"],
    "tau_above_one": ["--tau", "1.5"],
    "tau_nan": ["--tau", "nan"],
    "r_max_zero": ["--r-max", "0"],
    "retain_weight_negative": ["--retain-weight", "-1"],
    "retain_weight_nan": ["--retain-weight", "nan"],
    "gen_steps_negative": ["--gen-steps", "-3"],
    "batch_size_zero": ["--batch-size", "0"],
    "forget_n_zero": ["--forget-n", "0"],
    "forget_n_negative": ["--forget-n", "-5"],
    "grad_accum_zero": ["--grad-accum", "0"],
    "anchor_share_negative": ["--anchor-share", "-0.5"],
    "anchor_share_nan": ["--anchor-share", "nan"],
    "resolution_negative": ["--resolution", "-8"],
    "resolution_huge": ["--resolution", "100000"],
    "resolution_not_multiple_of_8": ["--resolution", "30"],
    "device_tpu": ["--device", "tpu"],
    "device_cuda_without_gpu": ["--device", "cuda"],
    "targets_bad_regex": ["--targets", "(("],
    "out_is_directory": ["--out", "{dir}"],
    "out_wrong_extension": ["--out", "{tmp}/x.bin"],
    "out_missing_folder": ["--out", "{missing}.safetensors"],
    "concept_empty": ["--concept", "   "],
    "concept_10000_chars_out_is_directory": ["--concept", "x" * 10_000, "--out", "{dir}"],
    "method_unknown": ["--method", "nope"],
    "kind_unknown": ["--kind", "animal"],
    "model_missing": ["--model", "/nonexistent/model/dir"],
    "model_folder_without_index": ["--model", "{dir}"],
    "forget_prompts_directory": ["--forget-prompts", "{dir}"],
    "forget_prompts_missing": ["--forget-prompts", "{missing}.txt"],
    "forget_images_is_file": ["--forget-images", "{imagefile}"],
    "forget_images_corrupt": ["--forget-images", "{images_bad}"],
    "forget_images_empty": ["--forget-images", "{images_empty}"],
    "kohya_wrong_extension": ["--kohya", "{tmp}/k.bin"],
    "kohya_missing_folder": ["--kohya", "{missing}.safetensors"],
    "seed_not_int": ["--seed", "abc"],
    # issue 26
    "concepts_csv_quoted_newline": ["--concepts", "{newline_csv}"],
    "concept_is_its_own_anchor": ["--concept", "triangle", "--anchor", " Triangle"],
    "concepts_10000": ["--concepts", "{many_concepts}", "--steps", "2"],
    "stop_judge_unknown": ["--stop-every", "5", "--stop-judge", "nosuch"],
    "stop_judge_without_stop_every": ["--stop-judge", "toy"],
    "stop_samples_without_stop_every": ["--stop-samples", "4"],
    "stop_judge_clip_without_weights": ["--stop-every", "5", "--stop-judge", "clip:ViT-B-32:openai"],
}
ERASE_PENDING: set[str] = set()  # cases whose validation is still pending: xfail

EVAL_CASES = {
    "steps_negative": ["--steps", "-3"],
    "steps_zero": ["--steps", "0"],
    "per_prompt_zero": ["--per-prompt", "0"],
    "per_prompt_huge": ["--per-prompt", "1000000000"],
    "batch_size_zero": ["--batch-size", "0"],
    "guidance_zero": ["--guidance-scale", "0"],
    "guidance_nan": ["--guidance-scale", "nan"],
    "strength_nan": ["--strength", "nan"],
    "strength_inf": ["--strength", "inf"],
    "resolution_negative": ["--resolution", "-8"],
    "resolution_not_multiple_of_8": ["--resolution", "30"],
    "prompts_directory": ["--prompts", "{dir}"],
    "prompts_missing": ["--prompts", "{missing}.txt"],
    "prompts_not_utf8": ["--prompts", "{latin1}"],
    "prompts_empty": ["--prompts", "{empty_prompts}"],
    "delta_missing": ["--delta", "{missing}.safetensors"],
    "delta_nan": ["--delta", "{nan_delta}"],
    "delta_pickle": ["--delta", "{pickle}"],
    "delta_without_fingerprint": ["--delta", "{nofp_delta}"],
    "device_tpu": ["--device", "tpu"],
    "out_is_file": ["--out", "{outfile}"],
    "kid_subset_zero": ["--kid-subset", "0"],
    "nudenet_threshold_above_one": ["--nudenet-threshold", "2"],
    "fd_unknown": ["--fd", "bogus"],
    "filter_without_equals": ["--filter", "categories"],
    "max_prompts_zero": ["--max-prompts", "0"],
    "real_images_missing": ["--real-images", "{missing}"],
    "delta_twice": ["--delta", "{good}", "--delta", "{good}"],
    "strength_huge": ["--strength", "1e6"],
}
EVAL_PENDING: set[str] = set()


def _fill(args, files):
    return [a.format(**files) if "{" in a and len(a) < 200 else a for a in args]


def _check_one_line(capsys, prog):
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"{prog}: error:"), err[0]
    return err[0]


@pytest.mark.parametrize("case", [pytest.param(c, marks=PENDING_ERASE) if c in ERASE_PENDING else c
                                  for c in sorted(ERASE_CASES)])
def test_semu_erase_refuses(case, tmp_path, good, capsys, monkeypatch, no_model_work):
    if case == "device_cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from semu_diffusion.cli import erase_main

    files = _files(tmp_path, good)
    monkeypatch.chdir(tmp_path)
    args = _fill(ERASE_CASES[case], files)
    if "--concept" not in args:
        args = ["--concept", "star"] + args
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as e:
        erase_main(args + ["--quiet"])
    assert e.value.code == 2
    _check_one_line(capsys, "semu-erase")
    assert sorted(os.listdir(tmp_path)) == before  # nothing written
    assert not [f for f in os.listdir(files["dir"]) if f.endswith((".safetensors", ".tmp"))]


@pytest.mark.parametrize("case", [pytest.param(c, marks=PENDING_EVAL) if c in EVAL_PENDING else c
                                  for c in sorted(EVAL_CASES)])
def test_semu_eval_refuses(case, tmp_path, good, capsys, monkeypatch, no_model_work):
    from semu_diffusion.cli import eval_main

    files = _files(tmp_path, good)
    monkeypatch.chdir(tmp_path)
    args = _fill(EVAL_CASES[case], files)
    if "--prompts" not in args:
        args = ["--prompts", files["prompts"]] + args
    if "--out" not in args:
        args += ["--out", str(tmp_path / "eval-out")]
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as e:
        eval_main(args)
    assert e.value.code == 2
    _check_one_line(capsys, "semu-eval")
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, no --out folder either


def test_cli_internal_error_exit_1_and_debug_traceback(monkeypatch, capsys, tmp_path):
    """An unexpected exception is exit 1 with one line; --debug adds the traceback; Ctrl-C is 130."""
    from semu_diffusion import cli

    @cli._cli_entry("semu-test")
    def boom(argv=None):
        if "--ctrl-c" in argv:
            raise KeyboardInterrupt
        raise ZeroDivisionError("division by zero")

    with pytest.raises(SystemExit) as e:
        boom([])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("semu-test: internal error: ZeroDivisionError") and "--debug" in err[0]
    with pytest.raises(SystemExit) as e:
        boom(["--debug"])
    assert e.value.code == 1 and "Traceback" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        boom(["--ctrl-c"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 130 and len(err) == 1 and "interrupted" in err[0]


def test_ctrl_c_during_the_final_write_leaves_nothing(tmp_path, capsys, monkeypatch, good):
    """Ctrl-C while the delta is being written: exit 130, one line, no output and no temp file; an existing file
    survives unchanged."""
    import safetensors.torch as st_torch

    from semu_diffusion import cli
    from semu_diffusion.delta import atomic_save

    real = st_torch.save_file

    def interrupted(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)  # the bytes are on disk (temp name) ...
        raise KeyboardInterrupt  # ... when the user presses Ctrl-C

    monkeypatch.setattr(st_torch, "save_file", interrupted)
    _, tensors, meta = good

    @cli._cli_entry("semu-erase")
    def main(argv=None):
        atomic_save(tensors, tmp_path / argv[0], meta)

    old = tmp_path / "old.safetensors"
    old.write_bytes(b"previous good file")
    for name in ("new.safetensors", "old.safetensors"):
        with pytest.raises(SystemExit) as e:
            main([name])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 130 and len(err) == 1 and err[0].startswith("semu-erase: interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.safetensors"]
    assert old.read_bytes() == b"previous good file"


# --------------------------------------------------------------------------------------------------- issue 26
ERASE_MESSAGES = {  # what each refusal says (the fix it names)
    "concepts_csv_quoted_newline": "line break",
    "concept_is_its_own_anchor": "is its own anchor",
    "concepts_10000": "10,000 concepts: one joint delta takes at most 128",
    "stop_judge_unknown": "unknown judge 'nosuch'",
    "stop_judge_without_stop_every": "add --stop-every N",
    "stop_samples_without_stop_every": "add --stop-every N",
    "stop_judge_clip_without_weights": "not in the local cache",
}


@pytest.mark.parametrize("case", sorted(ERASE_MESSAGES))
def test_semu_erase_issue26_messages(case, tmp_path, good, capsys, monkeypatch, no_model_work):
    from semu_diffusion.cli import erase_main

    files = _files(tmp_path, good)
    monkeypatch.chdir(tmp_path)
    args = _fill(ERASE_CASES[case], files)
    if "--concept" not in args and "--concepts" not in args:
        args = ["--concept", "star"] + args
    with pytest.raises(SystemExit) as e:
        erase_main(args + ["--quiet"])
    assert e.value.code == 2
    assert ERASE_MESSAGES[case] in _check_one_line(capsys, "semu-erase")


def test_concepts_csv_keeps_quoted_commas_and_newlines_in_one_cell(tmp_path):
    from semu_diffusion.config import ConfigError
    from semu_diffusion.multi import check_concepts, read_concepts_file

    f = tmp_path / "c.csv"
    f.write_text('concept,kind,anchor\n"red, triangle",object,circle\n"tri\nangle",object,\n# note\nstar,,heart\n')
    specs = read_concepts_file(f)
    assert [s.concept for s in specs] == ["red, triangle", "tri\nangle", "star"]
    assert [s.anchor for s in specs] == ["circle", None, "heart"]
    assert specs[2].where.endswith("line 6")  # csv line numbers count the quoted newline
    with pytest.raises(ConfigError, match="line break"):
        check_concepts(specs)


def test_semu_attack_judge_without_weights_is_refused_before_the_model(tmp_path, capsys, no_model_work):
    from semu_diffusion.cli import attack_main

    with pytest.raises(SystemExit) as e:
        attack_main(["--concept", "triangle", "--judge", "clip:ViT-B-32:openai", "--classes", "circle,star",
                     "--out", str(tmp_path / "att")])
    assert e.value.code == 2
    line = _check_one_line(capsys, "semu-attack")
    assert "internal error" not in line and "not in the local cache" in line
    assert not (tmp_path / "att").exists()


def test_merge_refuses_a_huge_weight_before_writing(tmp_path, good, capsys):
    from semu_diffusion.cli import merge_main
    from semu_diffusion.merge import merge_deltas

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(good[0].read_bytes())
    b.write_bytes(good[0].read_bytes())
    out = tmp_path / "m.safetensors"
    for w in ("1e6,1", "1e30,1", "11,1"):
        with pytest.raises(SystemExit) as e:
            merge_main([str(a), str(b), "--weights", w, "--out", str(out), "--allow-unverified"])
        assert e.value.code == 2
        assert "out of range" in _check_one_line(capsys, "semu-merge")
        assert not out.exists()
    with pytest.raises(DeltaError, match="out of range"):
        merge_deltas([a, b], out, weights=[1e30, 1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]
    merge_deltas([a, b], out, weights=[10, -10])  # the bounds themselves are accepted
    assert out.exists()


def test_save_delta_refuses_values_beyond_the_reader_limit_before_writing(tmp_path):
    d = Delta(format="lora")
    d.lora[LINEAR] = (torch.full((4, 2), 5e29), torch.ones(2, 8))
    d.ranks[LINEAR] = 2
    out = tmp_path / "x.safetensors"
    with pytest.raises(DeltaError, match="values up to 5e\\+29"):
        save_delta(out, d, {"method": "semu"})
    assert list(tmp_path.iterdir()) == []


def test_erase_divergence_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, toy_available):
    """--lr 1e30 (one step, so the loss is still finite): the update is ~1e30 x the base weight: refused, no file."""
    from semu_diffusion.cli import erase_main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        erase_main(["--concept", "triangle", "--lr", "1e30", "--steps", "1", "--forget-n", "2", "--gen-steps", "2",
                    "--retain-energy", "0", "--quiet", "--out", str(tmp_path / "t.safetensors")])
    assert e.value.code == 2
    line = _check_one_line(capsys, "semu-erase")
    assert "training diverged" in line and "lower --lr" in line
    assert list(tmp_path.iterdir()) == []


def test_cached_image_edited_or_swapped_is_regenerated_with_a_warning(tmp_path):
    import numpy as np

    from semu_diffusion.evaluation.cache import ImageCache
    from semu_diffusion.evaluation.prompts import Item

    logs = []
    cache = ImageCache(tmp_path / "c", {"k": 1}, log=logs.append)
    cache.prepare()
    batch = [Item(index=i, row=0, prompt="p", seed=i, guidance=7.5, height=8, width=8, label=None) for i in range(2)]
    ims = np.stack([np.full((8, 8, 3), 10 * (i + 1), np.uint8) for i in range(2)])
    cache.save(batch, ims)
    assert np.array_equal(cache.load(batch), ims) and not logs
    p0, p1 = cache.path(batch[0]), cache.path(batch[1])
    a, b = p0.read_bytes(), p1.read_bytes()
    p0.write_bytes(b), p1.write_bytes(a)  # swapped on disk
    assert cache.load(batch) is None and "does not match the hash" in logs[-1]
    cache.save(batch, ims)  # regenerated: the index matches again
    assert np.array_equal(cache.load(batch), ims)
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p1)  # edited
    assert cache.load(batch) is None and str(p1) in logs[-1]
