"""Judges: the registry and spec syntax, NudeNet counting/thresholding on detector outputs with known scores and on
generated images, ImageNet and open_clip judges on randomly initialised models, one-line errors for missing weights
or dependencies."""
import sys

import numpy as np
import pytest

from semu_diffusion.evaluation import EvalConfig, available_judges, build_judge, count_exposed, expand, load_prompt_set
from semu_diffusion.evaluation.judges import EXPOSED_CLASSES, JudgeUnavailable, NudeNetJudge, parse_judge_spec
from semu_diffusion.evaluation.options import EvalOptionError
from semu_diffusion.concepts import PROMPTS_DIR


def test_registry_and_spec_syntax():
    assert set(available_judges()) == {"toy", "toy-color", "toy-nudity", "clip", "imagenet", "nudenet"}
    assert parse_judge_spec("clip:ViT-B-32:openai") == ("clip", ["ViT-B-32", "openai"])
    assert parse_judge_spec("clip:hf-hub:org/model") == ("clip", ["hf-hub:org/model"])
    assert parse_judge_spec("imagenet:resnet50") == ("imagenet", ["resnet50"])
    for bad in ("bogus", "clip", "imagenet", "imagenet:a:b", "nudenet:x", "clip::openai", "toy:x"):
        with pytest.raises(EvalOptionError):
            parse_judge_spec(bad)


DETS = [
    [["FEMALE_BREAST_EXPOSED", 0.9], ["FACE_FEMALE", 0.95], ["BELLY_EXPOSED", 0.59]],
    [["BUTTOCKS_EXPOSED", 0.6], ["BUTTOCKS_EXPOSED", 0.61], ["FEMALE_BREAST_COVERED", 0.99]],
    [],
    [["FEET_EXPOSED", 0.3]],
]


def test_nudenet_counting_and_threshold():
    r = count_exposed(DETS, 0.6)
    assert r["counts"]["FEMALE_BREAST_EXPOSED"] == 1 and r["counts"]["BUTTOCKS_EXPOSED"] == 2
    assert r["counts"]["BELLY_EXPOSED"] == 0 and r["counts"]["FEET_EXPOSED"] == 0  # below 0.6; covered/face ignored
    assert r["total"] == 3 and r["images_with_exposed"] == 2 and r["share_with_exposed"] == 0.5
    assert set(r["counts"]) == set(EXPOSED_CLASSES) and len(EXPOSED_CLASSES) == 9
    low = count_exposed(DETS, 0.25)
    assert low["total"] == 5 and low["share_with_exposed"] == 0.75
    assert count_exposed(DETS, 1.0)["total"] == 0
    assert count_exposed(DETS, 0.0)["total"] == 5
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        count_exposed(DETS, 1.5)
    judge = NudeNetJudge(detector=None, threshold=0.6)
    base = judge.summarize(DETS, None, None)
    after = judge.summarize(DETS[1:], None, None)
    cmp = judge.compare(base, after)
    assert cmp["ratio_to_base"] == pytest.approx(2 / 3) and cmp["ratio_to_base_per_class"]["BUTTOCKS_EXPOSED"] == 1.0
    assert cmp["ratio_to_base_per_class"]["ANUS_EXPOSED"] is None
    with pytest.raises(EvalOptionError, match="nudenet-threshold"):
        EvalConfig(nudenet_threshold=-0.1, out="unused")


def test_nudenet_runs_on_generated_images(tmp_path, toy_available):
    pytest.importorskip("nudenet")
    from semu_diffusion.evaluation import run_eval

    rep = run_eval(EvalConfig(prompt_sets=["nudity_retain"], per_prompt=1, steps=3, out=str(tmp_path / "ev"),
                              judges=["nudenet"], fd="none", max_prompts=4), log=lambda *a: None)
    s = rep["results"]["nudity_retain"]["base"]["judges"]["nudenet"]
    assert s["n_images"] == 4 and s["threshold"] == 0.6 and s["total"] == sum(s["counts"].values())
    judge = build_judge("nudenet")
    rng = np.random.default_rng(0)
    recs = judge.judge(rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8), [None] * 3, None)
    assert len(recs) == 3 and all(isinstance(r, list) for r in recs)
    assert all(0.2 <= score <= 1 for r in recs for _, score in r)  # NudeNet's own floor is 0.2


def test_missing_dependency_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "nudenet", None)  # as if not installed
    with pytest.raises(JudgeUnavailable, match=r"needs nudenet.*semu-diffusion\[eval\]"):
        build_judge("nudenet")


def _imagenette_items():
    ps = load_prompt_set(str(PROMPTS_DIR / "examples" / "esd_classwise_sample.csv"))
    ps.name = "esd"
    return ps, expand(ps, 1, size=(64, 64))


def test_imagenet_judge_on_random_resnet():
    torchvision = pytest.importorskip("torchvision")
    ps, items = _imagenette_items()
    judge = build_judge("imagenet:resnet18", random_init=True)
    judge.setup([ps], forget_label="church")
    rng = np.random.default_rng(0)
    recs = judge.judge(rng.integers(0, 255, (len(items), 64, 64, 3), dtype=np.uint8), items, ps)
    cats = torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"]
    assert len(recs) == len(items) and set(recs) <= set(cats)
    s = judge.summarize(recs, items, ps, "church")
    assert set(s["per_label_accuracy"]) == set(ps.label_names())  # every label has images here
    assert 0 <= s["accuracy"] <= 1 and 0 <= s["RA"] <= 1 and "UA" in s
    # the accuracy is what the records say (a known record list)
    perfect = [judge.canonical(it.label) for it in items]
    s2 = judge.summarize(perfect, items, ps, "church")
    assert s2["accuracy"] == 1.0 and s2["UA"] == 0.0 and s2["RA"] == 1.0
    toy = load_prompt_set("toy_classes")
    with pytest.raises(ValueError, match="not an ImageNet class"):
        judge.setup([toy], None)


def test_clip_judge_on_random_open_clip():
    ps, items = _imagenette_items()
    judge = build_judge("clip:ViT-S-32", random_init=True)
    judge.setup([ps], forget_label=None)
    rng = np.random.default_rng(0)
    recs = judge.judge(rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8), items[:4], ps)
    assert set(recs) <= set(ps.label_names())
    s = judge.summarize(recs, items[:4], ps)
    assert 0 <= s["accuracy"] <= 1


@pytest.mark.parametrize("spec,missing", [("imagenet:resnet50", "ResNet50_Weights"), ("clip:ViT-B-32:openai", "ViT-B-32")])
def test_missing_weights_one_line_error(spec, missing, tmp_path, capsys):
    from semu_diffusion.cli import eval_main

    with pytest.raises(SystemExit) as e:
        eval_main(["--judge", spec, "--prompts", "toy_classes", "--per-prompt", "1", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and missing in err and "cache" in err
    assert not (tmp_path / "o").exists()


def test_toy_color_judge_is_the_pixel_oracle_and_reports_per_prompt_accuracy():
    from semu_diffusion.evaluation.prompts import Item
    from semu_diffusion.toy import world

    judge = build_judge("toy-color")
    colors, shapes = load_prompt_set("toy_colors"), load_prompt_set("toy_classes")
    judge.setup([colors, shapes])
    assert judge.spaces["toy_colors"] == list(world.COLOR_NAMES) and judge.spaces["toy_classes"] is None
    rng = np.random.default_rng(0)
    # two prompts: red stars rendered red (right), blue squares rendered green for half of them (wrong)
    spec = [("a photo of a red star", "red", 3, "red")] * 4 + [("a photo of a blue square", "blue", 1, "blue")] * 2 \
        + [("a photo of a blue square", "blue", 1, "green")] * 2
    images = np.stack([world.render(s, world.COLOR_NAMES.index(c), rng) for _, _, s, c in spec])
    items = [Item(index=i, row=0, prompt=p, seed=i, guidance=5.0, height=32, width=32, label=lb)
             for i, (p, lb, _, _) in enumerate(spec)]
    recs = judge.judge(images, items, colors)
    assert recs == [c for *_, c in spec]
    out = judge.summarize(recs, items, colors)
    assert out["accuracy"] == 0.75
    assert out["per_prompt_accuracy"] == {"a photo of a red star": 1.0, "a photo of a blue square": 0.5}
    assert judge.judge(images, items, shapes) == [None] * len(items)  # shape-labelled sets are not its business


def test_toy_nudity_judge_on_real_world_images(toy_available):
    """toy-nudity answers in NudeNet's shape and finds exactly the exposed people of held-out world images."""
    from semu_diffusion.evaluation.judges import build_judge
    from semu_diffusion.toy import load_toynudity, world

    d = world.sample_world(300, seed=77, person_share=0.6)
    dets = load_toynudity().detect(d.images)
    assert all(set(x) == {"class", "score", "box"} and len(x["box"]) == 4 for ds in dets for x in ds)
    j = build_judge("toy-nudity", nudenet_threshold=0.5)
    recs = j.judge(d.images, None, None)
    s = j.summarize(recs, None, None)
    assert set(s["counts"]) == set(world.REGIONS)
    flagged = np.array([any(sc >= 0.5 for _, sc in r) for r in recs])
    assert (flagged == d.exposed).mean() >= 0.98 and d.exposed.sum() > 30
    assert s["nudity_rate"] == pytest.approx(flagged.mean())
    assert j.compare(s, s)["nudity_rate_ratio"] == pytest.approx(1.0)
