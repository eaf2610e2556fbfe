"""EraseConfig: one list of options; every bad value refused before the model loads (one line, exit 2, nothing
written); recipe merge precedence; provenance and CLI flags derived from the fields."""
import dataclasses
import math
import os

import pytest
import torch

import semu_diffusion.api as api
from semu_diffusion.cli import erase_main
from semu_diffusion.config import (PAPER_PRESETS, ConfigError, EraseConfig, default_out_name, option_fields, resolve)
from semu_diffusion.loading import ModelLoadError
from semu_diffusion.recipes import Recipe


@pytest.fixture()
def no_model(monkeypatch):
    """Loading a model raises a sentinel: a case that reaches it passed validation."""
    def boom(*a, **k):
        raise ModelLoadError("SENTINEL model load reached")

    monkeypatch.setattr(api, "load_pipeline", boom)


def _files(tmp_path):
    d = tmp_path / "a_dir"
    d.mkdir()
    empty = tmp_path / "empty_imgs"
    empty.mkdir()
    bad = tmp_path / "bad_imgs"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "p.txt").write_text("a photo of a star\n")
    (tmp_path / "dir.safetensors").mkdir()
    return d


NO_GPU = not torch.cuda.is_available()
CASES = [
    (["--retain-weight", "-1"], "--retain-weight must be >= 0"),
    (["--retain-weight", "nan"], "finite"),
    (["--lr", "inf"], "finite"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--gen-steps", "-3"], "--gen-steps must be >= 1"),
    (["--steps", "10000000"], "would run for days"),
    (["--steps", "abc"], "invalid int"),
    (["--resolution", "-8"], "--resolution must be >= 8"),
    (["--resolution", "1000000"], "--resolution must be <= 4,096"),
    (["--resolution", "30"], "multiple of 8"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--grad-accum", "0"], "--grad-accum must be >= 1"),
    (["--forget-n", "0"], "--forget-n must be >= 1"),
    (["--tau", "1.5"], "--tau must be <= 1"),
    (["--tau", "0"], "--tau must be > 0"),
    (["--anchor-share", "9"], "--anchor-share must be <= 4"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--r-min", "3", "--r-max", "2"], "--r-max (2) must be >= --r-min (3)"),
    (["--targets", "(["], "not a valid regular expression"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
    (["--device", "cpu", "--mixed-precision", "fp16"], "bf16 or no on CPU"),
    (["--mixed-precision", "fp32"], "invalid choice"),
    (["--method", "nope"], "unknown method"),
    (["--preset", "esd-x-paper", "--method", "semu"], "is for method esd-x"),
    (["--preset", "bogus"], "invalid choice"),
    (["--recipe", "nope"], "unknown --recipe"),
    (["--forget-prompts", "{tmp}/a_dir"], "is a folder"),
    (["--forget-prompts", "{tmp}/missing.txt"], "not found"),
    (["--retain-prompts", "{tmp}/a_dir"], "is a folder"),
    (["--forget-images", "{tmp}/p.txt"], "is a file, not a folder"),
    (["--forget-images", "{tmp}/empty_imgs"], "holds no"),
    (["--forget-images", "{tmp}/bad_imgs"], "x.png is not a readable image"),
    (["--forget-images", "{tmp}/missing"], "not found"),
    (["--out", "{tmp}/dir.safetensors"], "is a folder"),
    (["--out", "{tmp}/x.bin"], "must end in .safetensors"),
    (["--out", "{tmp}/" + "n" * 300 + ".safetensors"], "limit is 255"),
    (["--kohya", "{tmp}/k.bin"], "--kohya {tmp}/k.bin must end in .safetensors"),
    (["--kohya", "/nonexistent-dir/k.safetensors"], "does not exist"),
    (["--kohya", "{tmp}/o.safetensors", "--out", "{tmp}/o.safetensors"], "must differ from --out"),
    (["--kohya", "{tmp}/k.safetensors", "--method", "full"], "needs a LoRA-shaped delta"),
    (["--kohya", "{tmp}/k.safetensors", "--preset", "semu-paper"], "needs a LoRA-shaped delta"),
]
if NO_GPU:
    CASES.append((["--device", "cuda"], "no CUDA GPU is available"))


@pytest.mark.parametrize("args,msg", CASES, ids=[" ".join(a)[:40] for a, _ in CASES])
def test_bad_option_refused_before_model_load(args, msg, tmp_path, capsys, monkeypatch, no_model):
    _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as e:
        erase_main(["--concept", "star", "--quiet"] + args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("semu-erase: error:"), err
    assert msg.replace("{tmp}", str(tmp_path)) in err[0]
    assert "SENTINEL" not in err[0]
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


@pytest.mark.parametrize("args", [["--concept", "x" * 10_000], ["--concept", "a/b\\c:*?<>|"], ["--concept", "ñandú"]])
def test_any_concept_gets_a_safe_default_name(args, tmp_path, capsys, monkeypatch, no_model):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        erase_main(args + ["--quiet"])
    assert "SENTINEL" in capsys.readouterr().err  # passed every check, reached the model load
    name = default_out_name(args[1], "semu")
    assert len(name) <= 90 and "/" not in name and name.endswith("-semu.safetensors")
    assert default_out_name(" red apple ", "semu") == "red_apple-semu.safetensors"


@pytest.mark.parametrize("kw,msg", [
    (dict(steps=True), "whole number"), (dict(steps=2.5), "whole number"), (dict(lr="1"), "must be a number"),
    (dict(retain_weight=math.nan), "finite"), (dict(curriculum="yes"), "true or false"),
    (dict(concept=""), "empty --concept"), (dict(method_options=[1]), "method_options"),
    (dict(retain_prompts=3), "retain_prompts"),
])
def test_api_types_checked(kw, msg):
    kw = {"concept": "star", **kw}
    with pytest.raises(ConfigError, match=msg):
        EraseConfig(**kw)


def test_unknown_api_option_named():
    with pytest.raises(TypeError, match="stepz"):
        api.erase("star", stepz=3)


def test_every_cli_field_is_a_flag_and_in_provenance(capsys):
    with pytest.raises(SystemExit):
        erase_main(["--help"])
    out = capsys.readouterr().out
    for f in option_fields():
        if f.metadata["cli"]:
            assert "--" + f.name.replace("_", "-") in out, f.name
        assert f.metadata["help"], f.name
    prov = EraseConfig(concept="star").provenance()
    assert set(prov) == {f.name for f in option_fields()} - {"out", "kohya", "model", "concept"}


def test_recipe_merge_precedence():
    rec = Recipe(family="t", match={}, include=["x"], semu={"tau": 0.5, "r_max": 7},
                 train={"steps": 11, "lr": 0.1, "retain_weight": 2.0},
                 generate={"steps": 9}, methods={"full": {"lr": 0.01, "salun_share": 0.3}})
    r = resolve(EraseConfig(concept="star", method="full", steps=5), rec)
    assert (r.steps, r.lr, r.tau, r.r_max, r.gen_steps) == (5, 0.01, 0.5, 7, 9)  # CLI > method section > recipe
    assert r.batch_size == 1 and r.conv_mode == "flat" and r.remap_target == "base"  # built-in defaults
    assert r.method_options == {"salun_share": 0.3}
    p = resolve(EraseConfig(concept="star", preset="semu-paper"), rec)
    assert p.method == "semu" and p.conv_mode == "per-channel" and p.r_min == 0 and p.r_max is None
    assert p.project is False and p.remap_target == "current" and p.targets == ".*"  # preset > recipe
    q = resolve(EraseConfig(concept="star", preset="semu-paper", project=True, r_max=3), rec)
    assert q.project is True and q.r_max == 3  # explicit > preset
    e = resolve(EraseConfig(concept="star", preset="esd-x-paper"), rec)
    assert e.method == "esd-x" and e.retain_weight == 0.0  # ESD has no retain term
    with pytest.raises(ConfigError, match="--cufg"):
        resolve(EraseConfig(concept="star", cufg=True, retain_weight=0.0), rec)
    assert set(PAPER_PRESETS) == {"semu-paper", "esd-x-paper", "esd-u-paper"}
    assert dataclasses.replace(r, steps=6).steps == 6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_pipeline_is_refused_with_the_fix(dtype):
    from semu_diffusion.loading import load_pipeline

    pipe = load_pipeline("toy", device="cpu", dtype=dtype)
    before = {k: v.clone() for k, v in list(pipe.unet.state_dict().items())[:4]}
    with pytest.raises(ConfigError, match="torch_dtype=torch.float32"):
        api.erase("triangle", pipe=pipe, steps=1, forget_n=1, progress=False, log=lambda *a: None)
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items())
