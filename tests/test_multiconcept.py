"""Joint multi-concept erasure: concept lists (bad input refused before any work), the per-layer subspace
combination, one shared pass of the shared stages, one delta whose provenance lists every concept."""
import json
from pathlib import Path

import pytest
import torch

from semu_diffusion.config import ConfigError
from semu_diffusion.multi import (ConceptSpec, check_concepts, erase_concepts, joint_rank_cap, joint_subspace,
                                  read_concepts_file)

TINY = dict(steps=2, forget_n=2, gen_steps=2, batch_size=2)
EXAMPLE = Path(__file__).resolve().parent.parent / "prompts" / "concepts_example.csv"


def test_concepts_file_formats(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("triangle\n# a comment\nVan Gogh style\n\n")  # trailing blank lines are the end of the file
    assert [s.concept for s in read_concepts_file(f)] == ["triangle", "Van Gogh style"]
    specs = read_concepts_file(EXAMPLE)
    assert [(s.concept, s.kind, s.anchor) for s in specs] == [("triangle", "object", "circle"),
                                                              ("star", "object", "circle"), ("heart", "object", "square")]
    g = tmp_path / "c.csv"
    g.write_text('anchor,concept\n,"a cat, sitting"\nsquare,star\n')
    assert [(s.concept, s.anchor) for s in read_concepts_file(g)] == [("a cat, sitting", None), ("star", "square")]


@pytest.mark.parametrize("text,msg", [
    ("triangle\n\nstar\n", "line 2 is empty"),
    ("triangle\n   \nstar\n", "line 2 is empty"),
    ("concept,colour\ntriangle,red\n", "header columns"),
    ("concept,kind\ntriangle,animal\n", "kind 'animal'"),
    ("concept,anchor\n,circle\n", "line 2 has an empty concept"),
    ("concept\n", "no concepts"),
    ("# only a comment\n", "holds no concepts"),
    ("triangle\nstar\nTriangle\n", "listed twice"),
    ("concept,anchor\ntriangle,triangle\n", "its own anchor"),
    ("concept,anchor\ntriangle,star\nstar,circle\n", "is itself erased"),
])
def test_bad_concept_files_are_one_line_errors(tmp_path, text, msg):
    f = tmp_path / "c.csv"
    f.write_text(text)
    with pytest.raises(ConfigError, match=msg) as e:
        check_concepts(read_concepts_file(f))
    assert "\n" not in str(e.value)


def test_bad_concept_lists(tmp_path):
    with pytest.raises(ConfigError, match="listed twice"):
        check_concepts([ConceptSpec("star"), ConceptSpec(" Star ")])
    with pytest.raises(ConfigError, match="its own anchor"):
        check_concepts([ConceptSpec("star"), ConceptSpec("heart")], anchor="heart")
    with pytest.raises(ConfigError, match="names the erased concept 'star'"):
        check_concepts([ConceptSpec("star"), ConceptSpec("heart")], retain_prompts=["a photo of a circle", "a star"])
    check_concepts([ConceptSpec("star")], retain_prompts=["a starfish"])  # whole words only
    with pytest.raises(ConfigError, match="no concepts"):
        check_concepts([])
    with pytest.raises(ConfigError, match="not found"):
        read_concepts_file(tmp_path / "missing.txt")


def test_cli_refuses_bad_lists_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from semu_diffusion import api, loading
    from semu_diffusion.cli import erase_main

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_pipeline", no_load)
    monkeypatch.setattr(api, "load_pipeline", no_load)
    out = tmp_path / "d.safetensors"
    f = tmp_path / "c.txt"
    f.write_text("triangle\n\nstar\n")
    r = tmp_path / "retain.txt"
    r.write_text("a photo of a circle\na photo of a star\n")
    cases = [
        (["--concept", "star", "--concept", "star"], "listed twice"),
        (["--concepts", str(f)], "line 2 is empty"),
        (["--concepts", str(tmp_path / "nope.txt")], "not found"),
        (["--concept", "star", "--concept", "heart", "--anchor", "star"], "its own anchor"),
        (["--concept", "star", "--concept", "heart", "--retain-prompts", str(r)], "erased concept 'star'"),
        (["--concept", "star", "--concept", "heart", "--forget-prompts", str(r)], "one concept's data"),
        (["--concept", "star", "--concept", "heart", "--steps", "0"], "--steps"),
    ]
    for args, msg in cases:
        with pytest.raises(SystemExit) as e:
            erase_main(args + ["--out", str(out)])
        assert e.value.code == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("semu-erase: error:") and msg in err and "\n" not in err, (args, err)
    assert not out.exists()


def _rank1(u, v):
    return torch.outer(u, v)


def test_concat_keeps_every_concepts_directions_where_the_sum_cancels():
    g = torch.Generator().manual_seed(0)
    out_, in_ = 24, 40
    Q1, _ = torch.linalg.qr(torch.randn(out_, 4, generator=g))
    Q2, _ = torch.linalg.qr(torch.randn(in_, 4, generator=g))
    a = 5 * _rank1(Q1[:, 0], Q2[:, 0]) + _rank1(Q1[:, 1], Q2[:, 1])
    b = -a + 0.3 * _rank1(Q1[:, 2], Q2[:, 2])  # a second concept whose gradient mostly opposes the first
    c = 2 * _rank1(Q1[:, 3], Q2[:, 3])

    def captured(sub, G):  # share of G's energy inside span(U) x span(V)
        P = sub.U.T @ G @ sub.V
        return float(P.norm() ** 2 / G.norm() ** 2)

    cat = joint_subspace([a, b, c], "concat", tau=0.99, r_min=1, r_cap=8)
    summ = joint_subspace([a, b, c], "sum", tau=0.99, r_min=1, r_cap=8)
    stack = joint_subspace([a, b, c], "stack", tau=0.99, r_min=1, r_cap=8, r_each=4)
    for G in (a, b, c):  # tau 0.99 of the joint energy: each concept keeps >= 95% of its own
        assert captured(cat, G) >= 0.95
        assert captured(stack, G) >= 0.95
    assert captured(summ, a) < 0.05 and captured(summ, b) < 0.05  # the sum cancelled the opposed concepts
    assert cat.rank <= 8 and torch.allclose(cat.U.T @ cat.U, torch.eye(cat.rank), atol=1e-5)
    # one concept: concat == the single-concept SVD subspace
    from semu_diffusion.svd import gradient_subspaces

    for G in (a + c, b):
        one = joint_subspace([G], "concat", tau=0.99, r_min=1, r_cap=8)
        ref = gradient_subspaces({"w": G}, tau=0.99, r_min=1, r_max=8, solver="full")["w"]
        assert one.rank == ref.rank
        assert torch.allclose(one.U @ one.U.T, ref.U @ ref.U.T, atol=1e-5)
        assert torch.allclose(one.V @ one.V.T, ref.V @ ref.V.T, atol=1e-5)
    assert joint_rank_cap(12, 1) == 12 and joint_rank_cap(12, 4) == 24 and joint_rank_cap(None, 4) is None


def test_joint_erase_one_delta_shared_stages_once(tmp_path, toy_available, monkeypatch):
    from semu_diffusion import api, load_delta
    from semu_diffusion.delta import read_delta
    from semu_diffusion.loading import load_pipeline

    pipe = load_pipeline("toy")
    calls = []
    real = api._own_latents

    def counting(run, prompts, off, desc):
        calls.append((desc, len(prompts)))
        return real(run, prompts, off, desc)

    monkeypatch.setattr(api, "_own_latents", counting)
    w0 = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    out = tmp_path / "three.safetensors"
    r = erase_concepts(["triangle", {"concept": "star", "anchor": "square"}, "heart"], pipe=pipe, out=out,
                       progress=False, log=lambda *a: None, **TINY)
    # one batched call per set; the retain set does not grow with N
    assert [d for d, _ in calls] == ["forget set", "anchor set", "retain set"]
    assert dict(calls) == {"forget set": 6, "anchor set": 3, "retain set": 2}
    for k, v in pipe.unet.state_dict().items():  # base restored exactly
        assert torch.equal(v, w0[k]), k
    d, prov = read_delta(out)
    assert prov["concepts"] == ["triangle", "star", "heart"]
    assert prov["anchors"] == ["circle", "square", "cross"]  # default anchors: the kept classes in turn
    assert prov["multi_concept"]["default_anchors"] == "spread"
    mc = prov["multi_concept"]
    assert mc["n_concepts"] == 3 and mc["combine"] == "concat" and mc["rank_cap"] == joint_rank_cap(12, 3)
    assert not any(w in " ".join(mc["retain_prompts"]) for w in ("triangle", "star", "heart"))
    assert max(d.ranks.values()) <= mc["rank_cap"] and r.stats["forget_latents"] == 6
    load_delta(pipe, out)  # validated against the model and loaded through diffusers
    pipe.unload_lora_weights()
    # a CSV concept list (its anchors), the sum combination
    out2 = tmp_path / "csv.safetensors"
    erase_concepts(read_concepts_file(EXAMPLE), pipe=pipe, out=out2, combine="sum", progress=False,
                   log=lambda *a: None, **TINY)
    _, p2 = read_delta(out2)
    assert p2["concepts"] == ["triangle", "star", "heart"] and p2["anchors"] == ["circle", "circle", "square"]
    assert p2["multi_concept"]["combine"] == "sum"
