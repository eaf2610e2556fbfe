"""Streaming evaluation: --real-images FD/KID (folder against itself ~ 0, against a shifted copy > 0, cached by
content hash), a 2-process accelerate run on CPU equal to the 1-process run, resuming from the image cache, and
bad options refused with one line, exit 2 and nothing written."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from semu_diffusion.cli import eval_main
from semu_diffusion.evaluation import EvalConfig, run_eval
from semu_diffusion.metrics import frechet_distance


def _write_folder(folder: Path, n: int = 40, shift: int = 0, seed: int = 0) -> Path:
    from PIL import Image

    from semu_diffusion.toy import world

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        im = world.render(i % 5, int(rng.integers(len(world.COLOR_NAMES))), rng).astype(int)
        Image.fromarray(np.clip(im + shift, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMU_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_real_folder_fd_self_zero_shift_positive(tmp_path, cache_dir, toy_available):
    from semu_diffusion.evaluation.features import ClipFeatures, kid, reference_stats

    ex = ClipFeatures("toy")
    real = _write_folder(tmp_path / "real")
    shifted = _write_folder(tmp_path / "shifted", shift=70)
    a = reference_stats(real, ex)
    assert not a["cached"] and a["n"] == 40
    again = reference_stats(real, ex)
    assert again["cached"] and again["hash"] == a["hash"]
    b = reference_stats(shifted, ex)
    assert b["hash"] != a["hash"]
    assert frechet_distance(a["mu"], a["sigma"], a["mu"], a["sigma"]) < 1e-6
    d_shift = frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])
    assert d_shift > 1.0
    assert kid(a["feats"], b["feats"], subset_size=20)[0] > kid(a["feats"], a["feats"], subset_size=20)[0]
    # a change of one file's content changes the key
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(real / "000.png")
    assert reference_stats(real, ex)["hash"] != a["hash"]


ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
           TOKENIZERS_PARALLELISM="false", SEMU_EVAL_PROGRESS="0")
ARGS = ["--prompts", "toy_classes", "--per-prompt", "2", "--steps", "4", "--batch-size", "3", "--forget-label", "triangle",
        "--kid-subset", "8"]


def test_two_process_run_equals_one_process_run_and_resumes(tmp_path, toy_available):
    accel = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    one, two = tmp_path / "one", tmp_path / "two"
    real = _write_folder(tmp_path / "real", n=12)
    env = dict(ENV, SEMU_CACHE_DIR=str(tmp_path / "cache"))
    args = ARGS + ["--real-images", str(real)]
    subprocess.run([sys.executable, "-m", "semu_diffusion.evaluation", *args, "--out", str(one)], env=env, check=True,
                   capture_output=True, timeout=600)
    # `--multi_gpu` selects the torchrun-style launcher; without CUDA the processes form a gloo CPU group
    p = subprocess.run([accel, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", "-m", "semu_diffusion.evaluation", *args, "--out", str(two)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r1, r2 = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert r2["timing"]["processes"] == 2 and r1["timing"]["processes"] == 1
    assert r2["timing"]["images_generated"] == r1["timing"]["images_generated"] == 20
    assert r1["results"] == r2["results"]  # judges, CLIP score, FD/KID against the real folder: identical
    base = r1["results"]["toy_classes"]["base"]
    assert base["fd_clip_retained_vs_real"] > 0 and np.isfinite(base["kid_clip_retained_vs_real"])
    assert r1["protocol"]["real_images"]["files"] == 12
    for f in sorted((one / "images" / "base" / "toy_classes").glob("*.png")):
        assert f.read_bytes() == (two / "images" / "base" / "toy_classes" / f.name).read_bytes()
    # resume: drop some cached images, rerun: only those are made again, same numbers
    gone = sorted((one / "images" / "base" / "toy_classes").glob("*.png"))[4:9]
    for f in gone:
        f.unlink()
    subprocess.run([sys.executable, "-m", "semu_diffusion.evaluation", *args, "--out", str(one)], env=env, check=True,
                   capture_output=True, timeout=600)
    r3 = json.loads((one / "report.json").read_text())
    assert 0 < r3["timing"]["images_generated"] <= 9  # whole batches of 3 around the 5 missing images
    assert r3["results"] == r1["results"]


def _bad_cases(tmp_path):
    noprompt = tmp_path / "noprompt.csv"
    noprompt.write_text("text,label\nx,y\n")
    afile = tmp_path / "afile"
    afile.write_text("x")
    broken = _write_folder(tmp_path / "broken", n=3)
    (broken / "zz.png").write_bytes(b"not an image")
    return [
        (["--steps", "-3"], "--steps"), (["--steps", "10000000"], "--steps"), (["--guidance-scale", "0"], "--guidance-scale"),
        (["--guidance-scale", "nan"], "--guidance-scale"), (["--per-prompt", "0"], "--per-prompt"),
        (["--per-prompt", "1000000000"], "--per-prompt"), (["--batch-size", "0"], "--batch-size"),
        (["--prompts", str(tmp_path)], "folder"), (["--nudenet-threshold", "1.5"], "--nudenet-threshold"),
        (["--nudenet-threshold", "-0.1"], "--nudenet-threshold"), (["--judge", "bogus"], "unknown judge"),
        (["--filter", "nocolon"], "--filter"), (["--prompts", str(noprompt)], "'prompt' column"),
        (["--real-images", str(broken)], "zz.png"), (["--real-images", str(afile)], "not a folder"),
        (["--device", "tpu"], "--device"), (["--resolution", "12"], "multiple of 8"), (["--steps", "abc"], "--steps"),
        (["--strength", "inf"], "--strength"), (["--delta", str(tmp_path)], "--delta"),
        (["--forget-label", "dragon"], "not a label"), (["--filter", "categories=sexual"], "no prompt set has"),
        (["--seed", "-1"], "--seed"), (["--max-prompts", "0"], "--max-prompts"),
    ]


def test_bad_options_one_line_exit_2_nothing_written(tmp_path, capsys, toy_available):
    for args, needle in _bad_cases(tmp_path):
        out = tmp_path / "out"
        argv = ["--per-prompt", "1", *args, "--out", str(out)]
        if "--prompts" not in args:
            argv = ["--prompts", "toy_classes", *argv]
        with pytest.raises(SystemExit) as e:
            eval_main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2, args
        assert len(err.splitlines()) == 1 and needle in err, (args, err)
        assert not out.exists(), args
    afile = tmp_path / "afile"
    with pytest.raises(SystemExit) as e:
        eval_main(["--prompts", "toy_classes", "--out", str(afile)])
    assert e.value.code == 2 and "is a file" in capsys.readouterr().err
    assert afile.read_text() == "x"
