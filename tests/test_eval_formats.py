"""Prompt-set formats: ours, I2P and ESD/SalUn CSVs (per-row seed, guidance and size), --filter, BOM, unique set names,
and per-row seed/guidance/size reaching the sampler of the toy model."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from semu_diffusion.concepts import PROMPTS_DIR
from semu_diffusion.evaluation import EvalConfig, expand, load_prompt_set, load_prompt_sets, run_eval
from semu_diffusion.evaluation.options import EvalOptionError
from semu_diffusion.evaluation.prompts import PromptSetError, batches

EX = PROMPTS_DIR / "examples"


def test_i2p_sample_columns_and_filter():
    ps = load_prompt_set(str(EX / "i2p_sample.csv"))
    assert ps.format == "i2p" and len(ps.rows) == 8 and not ps.has_labels
    r = ps.rows[1]
    assert (r.seed, r.guidance, r.width, r.height) == (3420, 7.0, 512, 512)
    assert ps.rows[2].guidance == 7.5
    sexual = load_prompt_set(str(EX / "i2p_sample.csv"), filters=["categories=sexual"])
    assert len(sexual.rows) == 5  # "sexual, shocking" matches too
    assert sexual.filters == ["categories=sexual"]
    items = expand(sexual, per_prompt=2, guidance=5.0, size=(32, 32))
    assert [it.seed for it in items[:4]] == [1201, 1202, 3420, 3421]
    assert {it.height for it in items} == {512}
    assert [it.height for it in expand(sexual, 1, size_override=64)] == [64] * 5
    assert {it.guidance for it in expand(sexual, 1, guidance_override=2.0)} == {2.0}


def test_esd_sample_labels_and_seeds():
    ps = load_prompt_set(str(EX / "esd_classwise_sample.csv"))
    assert ps.format == "esd" and ps.has_labels
    assert ps.rows[0].label == "cassette player" and ps.rows[0].seed == 4068
    assert ps.label_names()[:3] == ["cassette player", "chain saw", "church"]
    only = load_prompt_set(str(EX / "esd_classwise_sample.csv"), filters=["class=church"])
    assert [r.seed for r in only.rows] == [2218, 1903]


def test_bom_bad_cells_and_missing_prompt_column(tmp_path):
    f = tmp_path / "bom.csv"
    f.write_bytes("\ufeffprompt,label\na photo of a star,star\n".encode("utf-8"))
    assert load_prompt_set(str(f)).rows[0].label == "star"
    bad = tmp_path / "noprompt.csv"
    bad.write_text("text,label\nx,y\n")
    with pytest.raises(PromptSetError, match="needs a 'prompt' column"):
        load_prompt_set(str(bad))
    for cell, msg in (("seed\nabc", "noint.csv:2: seed"), ("sd_guidance_scale\nnan", "guidance"),
                      ("sd_image_width\n30", "multiple of 8")):
        col, val = cell.split("\n")
        p = tmp_path / "noint.csv"
        p.write_text(f"prompt,{col}\na cat,{val}\n")
        with pytest.raises(PromptSetError, match=msg):
            load_prompt_set(str(p))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("prompt\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(PromptSetError, match="not UTF-8"):
        load_prompt_set(str(latin))
    with pytest.raises(PromptSetError, match="is a folder"):
        load_prompt_set(str(tmp_path))


def test_same_stem_sets_get_distinct_names(tmp_path):
    a, b = tmp_path / "a" / "set.csv", tmp_path / "b" / "set.csv"
    for p, w in ((a, "circle"), (b, "star")):
        p.parent.mkdir()
        p.write_text(f"prompt,label\na photo of a {w},{w}\n")
    sets = load_prompt_sets([str(a), str(b)])
    assert len({ps.name for ps in sets}) == 2 and all(ps.name.startswith("set-") for ps in sets)
    with pytest.raises(EvalOptionError, match="given twice"):
        load_prompt_sets([str(a), str(a)])
    with pytest.raises(EvalOptionError, match="no prompt set has a column"):
        load_prompt_sets([str(a)], filters=["categories=sexual"])


def test_batches_split_on_guidance_and_size():
    ps = load_prompt_set(str(EX / "toy_esd_sample.csv"))
    items = expand(ps, per_prompt=2, size=(32, 32))
    bl = batches(items, batch_size=3)
    assert [len(b) for b in bl] == [2, 2, 2, 2, 2]  # guidance alternates 3/5 row by row
    assert all(len({(it.guidance, it.height) for it in b}) == 1 for b in bl)


def _direct(pipe, prompt, seed, guidance, h, w, steps):
    f = pipe.vae_scale_factor
    lat = torch.randn((pipe.unet.config.in_channels, h // f, w // f), generator=torch.Generator("cpu").manual_seed(seed))
    with torch.no_grad():
        im = pipe([prompt], latents=lat[None], num_inference_steps=steps, guidance_scale=guidance, height=h, width=w,
                  output_type="np").images[0]
    return (np.clip(im, 0, 1) * 255).round().astype(np.uint8)


def test_per_row_seed_guidance_size_reach_the_sampler(tmp_path, toy_available):
    """The cached image of each CSV row is exactly the image the toy pipeline makes with that row's seed, guidance
    and size (and differs from the one with the other guidance)."""
    from PIL import Image

    from semu_diffusion.loading import load_pipeline

    csv = tmp_path / "rows.csv"
    shutil.copy(EX / "toy_esd_sample.csv", csv)
    i2p = tmp_path / "i2p_toy.csv"
    i2p.write_text("prompt,categories,sd_seed,sd_guidance_scale,sd_image_width,sd_image_height\n"
                   "a photo of a heart,shapes,77,4.0,40,32\n")
    out = tmp_path / "ev"
    run_eval(EvalConfig(prompt_sets=[str(csv), str(i2p)], per_prompt=1, steps=4, out=str(out), fd="none",
                        batch_size=8), log=lambda *a: None)
    pipe = load_pipeline("toy")
    ps = load_prompt_set(str(csv))
    for i, r in enumerate(ps.rows):
        got = np.asarray(Image.open(out / "images" / "base" / "rows" / f"{i:05d}_{r.seed}.png"))
        assert np.array_equal(got, _direct(pipe, r.prompt, r.seed, r.guidance, 32, 32, 4))
        other = 5.0 if r.guidance == 3.0 else 3.0
        assert not np.array_equal(got, _direct(pipe, r.prompt, r.seed, other, 32, 32, 4))
    got = np.asarray(Image.open(out / "images" / "base" / "i2p_toy" / "00000_77.png"))
    assert got.shape == (32, 40, 3)
    assert np.array_equal(got, _direct(pipe, "a photo of a heart", 77, 4.0, 32, 40, 4))
