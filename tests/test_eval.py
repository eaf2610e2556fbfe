"""semu-eval on the shipped toy model: paired generation, classifier, FD-CLIP, CLIP score, report files, caching,
and the class-wise efficacy of a SEMU erasure of "triangle"."""
import json
import os
import shutil
import subprocess

import pytest

from semu_diffusion.cli import eval_main
from semu_diffusion.evaluation import EvalConfig, load_prompt_set, run_eval

PER = 10


@pytest.fixture(scope="module")
def triangle_eval(tmp_path_factory, toy_available):
    from semu_diffusion import erase

    d = tmp_path_factory.mktemp("tri")
    res = erase("triangle", out=d / "triangle.safetensors", progress=False, log=lambda *a: None)
    rep = run_eval(EvalConfig(deltas=[str(res.out)], prompt_sets=["toy_classes", "toy_synonyms"], per_prompt=PER,
                              out=str(d / "eval"), forget_label="triangle"))
    return res, rep, d


def test_semu_erases_triangle_and_keeps_the_rest(triangle_eval):
    res, rep, _ = triangle_eval
    base = rep["results"]["toy_classes"]["base"]
    tri = rep["results"]["toy_classes"]["triangle"]
    assert base["per_label_accuracy"]["triangle"] >= 0.8
    assert tri["per_label_accuracy"]["triangle"] <= 0.05
    assert base["RA"] - tri["RA"] <= 0.05
    assert res.stats["trainable_frac"] <= 0.01
    # retained classes drift from the base model by less than 1.5x the base model's own distance to real images
    # (the anchor set, recipe anchor_share 0.5, raised this drift from ~0.6x to ~1.1x: colours shift; see classwise.md)
    assert tri["fd_clip_retained_vs_base"] < 1.5 * base["fd_clip_retained_vs_real"]


def test_report_files_and_protocol(triangle_eval):
    _, rep, d = triangle_eval
    out = d / "eval"
    saved = json.loads((out / "report.json").read_text())
    assert saved["protocol"]["steps"] and saved["protocol"]["versions"]["torch"]
    assert (out / "detection.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert html.count("<img src='images/") == 2 * 2 * 10 * 8  # 2 sets x 2 variants x 10 prompts x 8 shown
    for v in ("base", "triangle"):
        assert len(list((out / "images" / v / "toy_classes").glob("*.png"))) == 10 * PER


def test_rerun_uses_the_image_cache(triangle_eval):
    res, _, d = triangle_eval
    rep = run_eval(EvalConfig(deltas=[str(res.out)], prompt_sets=["toy_classes"], per_prompt=PER, out=str(d / "eval"),
                              forget_label="triangle"))
    assert rep["timing"]["images_generated"] == 0


def test_cache_key_covers_the_vae_and_text_encoder(toy_available):
    """The UNet fingerprint alone would reuse images after a VAE or text-encoder change (e.g. a retrained decoder)."""
    import torch

    from semu_diffusion.evaluation.run import frozen_parts_id
    from semu_diffusion.toy import load_toy_pipeline

    pipe = load_toy_pipeline()
    a = frozen_parts_id(pipe)
    assert a == frozen_parts_id(load_toy_pipeline(dtype=torch.float16))  # the same weights, loaded in fp16
    with torch.no_grad():
        pipe.vae.decoder.conv_out.weight.mul_(1.01)
    b = frozen_parts_id(pipe)
    with torch.no_grad():
        pipe.text_encoder.get_parameter(next(n for n, _ in pipe.text_encoder.named_parameters() if n.endswith("final_layer_norm.weight"))).add_(0.01)
    assert len({a, b, frozen_parts_id(pipe)}) == 3


def test_html_renders_in_headless_chromium(triangle_eval, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        if os.environ.get("CI", "") not in ("", "0", "false"):
            pytest.fail("chromium not installed: scripts/test.sh installs Debian's chromium when run as root")
        pytest.skip("chromium not installed (scripts/test.sh installs it when run as root)")
    _, _, d = triangle_eval
    png = tmp_path / "shot.png"
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'u'}",
                    f"--screenshot={png}", "--window-size=1200,900", f"file://{d / 'eval' / 'report.html'}"],
                   check=True, timeout=120, capture_output=True)
    from PIL import Image
    import numpy as np

    im = np.asarray(Image.open(png).convert("RGB")).astype(float)
    assert im.std() > 20  # images rendered, not a blank page


def test_prompt_set_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="unknown prompt set"):
        load_prompt_set("no_such_set")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        load_prompt_set(str(empty))
    ps = load_prompt_set("toy_classes")
    assert len(ps.prompts) == 10 and ps.has_labels


def test_cli_refuses_delta_for_other_model(random_pipe, tmp_path, capsys, toy_available):
    from semu_diffusion import erase

    foreign = tmp_path / "foreign.safetensors"
    erase("star", pipe=random_pipe, out=foreign, steps=2, forget_n=2, batch_size=2, progress=False, log=lambda *a: None)
    out = tmp_path / "ev"
    with pytest.raises(SystemExit) as e:
        eval_main(["--delta", str(foreign), "--prompts", "toy_classes", "--per-prompt", "1", "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "made for base model" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_unknown_set_and_unwritable_out(capsys, tmp_path, toy_available):
    with pytest.raises(SystemExit):
        eval_main(["--prompts", "nope", "--out", str(tmp_path / "x")])
    assert "unknown prompt set" in capsys.readouterr().err
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit):
        eval_main(["--prompts", "toy_classes", "--out", str(blocker / "out")])
    assert "cannot be written" in capsys.readouterr().err
