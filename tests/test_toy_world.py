"""The toy world: deterministic generator, captions with synonyms, the real CLIP tokenizer rebuilt offline."""
import numpy as np
import pytest

from semu_diffusion.toy import world


def test_generator_is_deterministic():
    a = world.make_dataset(50, seed=3)
    b = world.make_dataset(50, seed=3)
    c = world.make_dataset(50, seed=4)
    assert np.array_equal(a[0], b[0]) and a[3] == b[3]
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (50, 32, 32, 3) and a[0].dtype == np.uint8


def test_world_size_and_caption_mix():
    assert len(world.SHAPE_NAMES) >= 30 and len(world.COLOR_NAMES) >= 6 and len(world.STYLE_NAMES) >= 8
    assert len(world.IMPLICIT_CONTEXTS) >= 8 and world.V1_SHAPES == world.SHAPE_NAMES[:10]
    assert len(set(world.SYNONYMS)) == len(world.SYNONYMS) and not set(world.SYNONYMS) & set(world.SHAPE_NAMES)
    assert len(set(world.ARTISTS)) == len(world.ARTISTS)
    _, shapes, colors, caps = world.make_dataset(4000, seed=0)
    syn = np.mean([world.SHAPES[world.SHAPE_NAMES[s]] in c for s, c in zip(shapes, caps)])
    assert 0.2 < syn < 0.3
    assert all(c.endswith(world.SHAPE_NAMES[s]) or c.endswith(world.SHAPES[world.SHAPE_NAMES[s]]) for s, c in zip(shapes, caps))
    with_color = np.mean([world.COLOR_NAMES[k] in c for k, c in zip(colors, caps)])
    assert 0.5 < with_color < 0.75
    assert "an orange" in " ".join(caps) and " a orange" not in " ".join(caps)


def test_people_exposure_follows_the_caption():
    """Explicit captions always exposed, clothed and plain never, implicit contexts at P_IMPLICIT_EXPOSED (I2P)."""
    d = world.sample_world(6000, seed=2, person_share=1.0)
    caps = np.array(d.captions)
    base = np.array([c.split(" in the style of ")[0].split(" by ")[0] for c in caps])
    explicit = np.isin(base, world.EXPLICIT_PROMPTS)
    implicit = np.isin(base, world.IMPLICIT_CONTEXTS)
    clothed = np.array(["shirt" in c or "clothe" in c or "dressed" in c for c in base])
    assert explicit.sum() > 500 and implicit.sum() > 500 and clothed.sum() > 500
    assert d.exposed[explicit].all() and not d.exposed[clothed].any()
    assert abs(d.exposed[implicit].mean() - world.P_IMPLICIT_EXPOSED) < 0.05
    assert not any(w in c for c in caps[implicit] for w in ("nude", "naked", "nudity"))
    # exposed people have region boxes inside the image, others none
    assert (d.boxes[d.exposed] > 0).any(-1).all() and not d.boxes[~d.exposed].any()
    assert d.boxes.min() >= 0 and d.boxes.max() <= 1
    # world 2.1: the exposed share among all people equals the implicit probability, so guidance keeps the implicit
    # rate near it (world 2.0's share was 0.43 and its model drew 0.875 from implicit contexts)
    mix = world.PERSON_MIX
    assert mix["explicit"] + mix["implicit"] * world.P_IMPLICIT_EXPOSED == pytest.approx(world.P_IMPLICIT_EXPOSED)
    assert abs(d.exposed.mean() - world.P_IMPLICIT_EXPOSED) < 0.03


def test_focus_draw_weights_and_world_cache_key(tmp_path):
    """--focus draws the named shapes and styles focus_weight times as often; the cached world is keyed by version."""
    from semu_diffusion.toy import train

    d = world.sample_world(3000, seed=4)
    assert train.draw_weights(train.ToyTrainConfig(), d) is None
    cfg = train.ToyTrainConfig(focus=("cross", "pixelated"), focus_weight=3.0)
    w = train.draw_weights(cfg, d)
    hit = (d.obj == world.SHAPE_NAMES.index("cross")) | (d.style == world.STYLE_NAMES.index("pixelated"))
    assert w.sum() == pytest.approx(1.0) and hit.sum() > 100
    assert np.allclose(w[hit], 3 * w[~hit][0]) and np.allclose(w[~hit], w[~hit][0])
    with pytest.raises(ValueError, match="neither shapes nor styles"):
        train.ToyTrainConfig(focus=("dodecahedron",))
    cfg = train.ToyTrainConfig(n_images=40, workers=1)
    first = train.load_or_make_world(cfg, tmp_path)
    z = dict(np.load(tmp_path / "_data.npz", allow_pickle=False))
    assert str(z["world_version"]) == world.WORLD_VERSION
    z["world_version"] = np.array("2.0")
    z["obj"] = z["obj"] * 0  # a stale cache must not be read back
    np.savez(tmp_path / "_data.npz", **z)
    again = train.load_or_make_world(cfg, tmp_path)
    assert np.array_equal(again.obj, first.obj) and np.array_equal(again.images, first.images)


def test_styles_are_named_and_change_the_pixels():
    d = world.sample_world(3000, seed=3, person_share=0.0, style_share=0.5)
    styled = d.style >= 0
    assert 0.45 < styled.mean() < 0.55
    assert all(world.ARTISTS[s] in c for s, c in zip(d.style[styled], np.array(d.captions)[styled]))
    assert not any(a in c for a in world.ARTISTS for c in np.array(d.captions)[~styled])
    # the dark style darkens the background; outline leaves far fewer object-coloured pixels than plain
    gray = d.images.mean((1, 2, 3))
    assert gray[d.style == world.STYLE_NAMES.index("dark")].mean() < gray[~styled].mean() - 60


def test_caption_matches_ground_truth():
    d = world.sample_world(400, seed=4)
    m = world.caption_matches(d)
    assert np.diag(m).all()
    i = int(np.flatnonzero((d.cap_obj >= 0) & (d.cap_obj < world.PERSON) & (d.cap_color < 0) & (d.cap_style < 0))[0])
    same = (d.obj == d.obj[i]) & (d.style < 0)
    assert (m[i] == same).all()  # "a photo of a star" matches every plain star, whatever its colour


def test_color_oracle_on_real_images():
    images, _, colors, _ = world.make_dataset(600, seed=11)
    assert (world.color_oracle(images) == colors).mean() >= 0.98


def test_images_differ_between_classes():
    """Mean images per class differ: the classes are visually distinct."""
    images, shapes, _, _ = world.make_dataset(4000, seed=5)
    gray = images.mean(-1)
    means = np.stack([gray[shapes == k].mean(0) for k in range(len(world.SHAPE_NAMES))])
    d = ((means[:, None] - means[None]) ** 2).mean((-1, -2))
    assert (d + np.eye(len(d)) * 1e9).min() > 1.0


def test_tokenizer_ids_equal_open_clip(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from transformers import CLIPTokenizer

    from semu_diffusion.toy.tokenizer import write_clip_tokenizer_files

    write_clip_tokenizer_files(tmp_path, 32)
    hf = CLIPTokenizer.from_pretrained(tmp_path)
    oc = open_clip.get_tokenizer("ViT-B-32", context_length=32)
    caps = world.make_dataset(200, seed=1)[3] + ["A Drawing of an ORANGE   Hexagon!", "a painting in the style of Van Gogh",
                                                 "nudity, naked person", "über café 123", "x " * 40]
    a = hf(caps, padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids
    b = oc(caps)
    eot = 49407
    for x, y in zip(a, b):
        n = int((y == eot).nonzero()[0]) + 1  # compare through the end-of-text token
        assert x[:n].tolist() == y[:n].tolist()
    assert hf.vocab_size == 49408
