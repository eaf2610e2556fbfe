"""eval/cost.py: --targets (named sets and regexes), --name, and the FLOP-share analysis, on the toy model."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
import cost  # noqa: E402  (eval/cost.py)

from semu_diffusion.recipes import recipe_for, select_targets  # noqa: E402

ATTN = r"attn2\.to_(q|k|v|out\.0)$"


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the small SVDs of SEMU's setup spin on a busy 2-CPU machine with two (0.6 s -> 40 s)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def toy_pipe():
    from semu_diffusion.loading import load_pipeline

    return load_pipeline("toy")


def test_resolve_targets():
    assert cost.resolve_targets(None) is None and cost.resolve_targets("recipe") is None
    assert cost.resolve_targets("conv-attn") == cost.TARGET_SETS["conv-attn"]
    assert cost.resolve_targets(ATTN) == ATTN
    with pytest.raises(SystemExit, match="not a valid regular expression"):
        cost.resolve_targets("attn2(")


def test_target_info_counts_layers_and_params(toy_pipe):
    unet = toy_pipe.unet
    rec = recipe_for(unet.config)
    # the toy recipe trains cross-attention, the transformer projections and the resnet convs: conv-attn is that set
    assert cost.target_names(unet, cost.TARGET_SETS["conv-attn"]) == select_targets(unet, rec.include, rec.exclude)
    info = cost.target_info(unet, ATTN)
    names = [n for n, _ in unet.named_modules() if re.search(ATTN, n)]
    assert info["layers"] == len(names) == 28 and info["conv_layers"] == 0
    assert info["params"] == sum(unet.get_submodule(n).weight.numel() for n in names)
    assert info["bias_params"] == sum(b.numel() for n in names if (b := unet.get_submodule(n).bias) is not None)
    assert info["source"] == "--targets" and info["regex"] == ATTN
    rinfo = cost.target_info(unet, None)
    assert rinfo["source"] == "recipe toy" and rinfo["layers"] == 63 and rinfo["conv_layers"] == 35 and rinfo["params"] > 5 * info["params"]


def test_flop_analysis_shares_and_bound(toy_pipe):
    r = cost.flop_analysis(toy_pipe, 32, {"recipe": None, "attn": ATTN}, log=lambda *x: None)
    F = r["forward_flops"]
    assert F > 1e8 and r["by_op"]["aten._scaled_dot_product_flash_attention_for_cpu"] > 0  # CPU attention counted
    rec, att = r["sets"]["recipe"], r["sets"]["attn"]
    assert 0 < att["share"] < rec["share"] < 1
    for e in (rec, att):
        assert e["ratio_bound"] == pytest.approx(2 * F / (2 * F + e["target_forward_flops"]))
        s, f = e["step_flops"]["semu"]["flops"], e["step_flops"]["full"]["flops"]
        branch = e["step_flops"]["semu"]["low_rank_branch_forward_flops"]
        assert 0 < branch < 0.15 * F and s < f
        # full adds the targets' weight gradients (~F_targets); SEMU adds its branches (forward + backward ~2x)
        assert (f - s) == pytest.approx(e["target_forward_flops"] - 2 * branch, abs=0.01 * F)


def test_cli_targets_and_name_write_the_named_report(tmp_path):
    cost.main(["--arch", "toy", "--skip-e2e", "--memory-methods", "", "--methods", "semu,full", "--repeats", "1",
               "--iters", "1", "--targets", ATTN, "--name", "mine", "--out-dir", str(tmp_path)])
    r = json.loads((tmp_path / "mine.json").read_text())
    assert r["targets"]["regex"] == ATTN and r["targets"]["layers"] == r["svd_stage"]["auto"]["layers"]
    assert r["train_step"]["methods_info"]["full"]["trainable_params"] == r["targets"]["params"]
    assert f"`{ATTN}`" in (tmp_path / "mine.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json", "mine.md"]


def test_cli_bad_targets_writes_nothing(tmp_path):
    with pytest.raises(SystemExit, match="--targets"):
        cost.main(["--arch", "toy", "--flops", "--targets", "resnets(", "--out-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_profile_step_splits_floor_semu_full(toy_pipe):
    r = cost.profile_step(toy_pipe, 32, ATTN, repeats=1, log=lambda *x: None)
    med = r["median_step_seconds"]
    assert set(med) == {"floor", "semu", "full"} and all(v > 0 for v in med.values())
    assert r["semu_over_full"] == pytest.approx(med["semu"] / med["full"])
    assert r["targets"]["layers"] == 28 and set(r["profile"]) == {"semu", "full"}
    assert any(e["op"].startswith("aten::") for e in r["profile"]["full"]["top"])
    b = r["semu_branch"]
    assert b["ranks"] and 0 < b["share_of_step"] < 1
    assert "floor" in cost.profile_markdown({"arch": "toy", "device": "cpu", "omp_num_threads": "1", **r})
