"""Concept-recovery attacks on the toy model: a real attack (inversion recovers a class on the base model), the report
of a delta, and bad input refused with one line before any model work."""
import json

import pytest

from semu_diffusion.attacks import AttackConfig, available_attacks, run_attacks
from semu_diffusion.cli import attack_main


def test_registry_lists_the_attacks():
    assert {"inversion", "prompt-search", "random"} <= set(available_attacks())


def test_inversion_recovers_a_class_on_the_base_model(toy_available, tmp_path):
    cfg = AttackConfig(concept="triangle", attacks=["inversion"], steps=60, checkpoints=2, n_images=10, n_data=16,
                       out=str(tmp_path / "a"))
    rep = run_attacks(cfg, log=None)
    base = rep["results"]["base"]
    assert base["no_attack"]["asr"] >= 0.9  # the plain prompt makes triangles on the base model
    inv = base["inversion"]
    assert inv["asr"] >= 0.8, inv["curve"]  # learned tokens alone (no class word) bring the class back
    assert inv["curve"][0]["step"] == 0 and inv["curve"][-1]["step"] == 60
    # the control is inversion's starting point (same random vectors): it does not make triangles
    assert base["random"]["asr"] <= 0.3
    assert base["random"]["asr"] == inv["curve"][0]["asr"]
    assert "triangle" not in inv["prompt"]


def test_report_fields_for_a_delta(toy_available, tmp_path):
    from semu_diffusion import erase
    from semu_diffusion.loading import load_pipeline

    pipe = load_pipeline("toy")
    d = tmp_path / "semu-triangle.safetensors"
    erase("triangle", pipe=pipe, method="semu", out=d, steps=3, forget_n=4, seed=0, progress=False, log=lambda *x: None)
    w0 = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    out = tmp_path / "rep"
    cfg = AttackConfig(concept="triangle", attacks=["inversion", "prompt-search"], deltas=[str(d)], steps=4,
                       checkpoints=2, n_images=4, n_data=4, batch_size=2, out=str(out))
    rep = run_attacks(cfg, log=None, pipe=pipe)
    assert set(rep["results"]) == {"base", "semu-triangle"}
    for v, r in rep["results"].items():
        assert 0.0 <= r["no_attack"]["asr"] <= 1.0
        for n in ("inversion", "prompt-search", "random"):
            a = r[n]
            assert 0.0 <= a["asr"] <= 1.0 and 0.0 <= a["asr_final"] <= 1.0 and a["asr"] >= a["asr_final"]
            assert [p["step"] for p in a["curve"]] == ([0, 2, 4] if n != "random" else [0])
            assert a["attack_seconds"] >= 0 and a["seconds"] >= a["attack_seconds"]
            assert (out / a["images"]).is_file()
    ps = rep["results"]["semu-triangle"]["prompt-search"]
    # real vocabulary tokens (decoded; sub-words may join into one word) before the concept prompt
    assert ps["typed_prompt"].endswith(" a photo of a triangle") and len(ps["typed_prompt"]) > len(" a photo of a triangle")
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["deltas"]["semu-triangle"]["sha256_16"] and on_disk["protocol"]["budget_steps"] == 4
    assert "semu-triangle" in (out / "report.html").read_text()
    # the pipeline is left as it was: base weights, no adapter, frozen flags restored
    assert all((pipe.unet.state_dict()[k] == v).all() for k, v in w0.items())


@pytest.mark.parametrize("args,needle", [
    (["--concept", "triangle", "--images", "{empty}"], "holds no"),
    (["--concept", "triangle", "--images", "{missing}"], "not found"),
    (["--concept", "triangle", "--steps", "0"], "--steps"),
    (["--concept", "triangle", "--steps", "-3"], "--steps"),
    (["--concept", "triangle", "--attack", "jailbreak"], "unknown attack"),
    (["--concept", "triangle", "--tokens", "0"], "--tokens"),
    (["--attack", "inversion"], "--concept"),
    (["--concept", "triangle", "--delta", "{missing}"], "not found"),
])
def test_bad_input_one_line_before_model_work(args, needle, tmp_path, monkeypatch, capsys):
    import semu_diffusion.loading as loading

    def boom(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_pipeline", boom)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    args = [x.format(empty=tmp_path / "empty", missing=tmp_path / "nope") for x in args]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        attack_main(args + ["--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("semu-attack: error:") and needle in err, err
    assert not out.exists()


@pytest.mark.parametrize("args,needle", [
    (["--attack", "jailbreak", "--forget-label", "triangle"], "unknown attack"),
    (["--attack", "inversion"], "--forget-label"),
    (["--attack", "inversion", "--forget-label", "triangle", "--attack-steps", "0"], "--steps"),
])
def test_semu_eval_attack_bad_input(args, needle, tmp_path, monkeypatch, capsys):
    import semu_diffusion.loading as loading
    from semu_diffusion.cli import eval_main

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        eval_main(args + ["--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("semu-eval: error:") and needle in err, err
    assert not out.exists()
