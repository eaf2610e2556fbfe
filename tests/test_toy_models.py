"""The shipped toy models: load offline, generate, meet the model-card targets; training decreases the loss."""
import json

import numpy as np
import pytest
import torch

from semu_diffusion.toy import PIPELINE_DIR, world


def test_pipeline_loads_offline_with_stock_diffusers(toy_available):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(PIPELINE_DIR, local_files_only=True, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a photo of a red star", "a blue circle"], num_inference_steps=10,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.std() > 0.05
    import open_clip

    ids = open_clip.get_tokenizer("ViT-B-32", context_length=32)(["a star"])[0][:4].tolist()
    assert pipe.tokenizer("a star").input_ids == ids


def test_generation_is_seeded_and_batch_independent(toy_available):
    from semu_diffusion.generation import generate
    from semu_diffusion.loading import load_pipeline

    pipe = load_pipeline("toy")
    a = generate(pipe, ["a photo of a star", "a photo of a heart"], [1, 2], steps=8, progress=False)
    b = generate(pipe, ["a photo of a heart"], [2], steps=8, progress=False)
    assert np.abs(a[1].astype(int) - b[0].astype(int)).max() <= 1


def test_small_training_run_decreases_loss_and_resumes_exactly(tmp_path, monkeypatch):
    """VAE and UNet losses fall; a UNet run cut after its checkpoint and resumed ends with the same weights as an
    uninterrupted run (per-step seeds, checkpointed optimizer)."""
    from transformers import CLIPTokenizer

    from semu_diffusion.toy import train as T
    from semu_diffusion.toy.tokenizer import write_clip_tokenizer_files

    cfg = T.ToyTrainConfig(n_images=256, vae_steps=40, unet_steps=6, vae_batch=16, unet_batch=8, checkpoint_every=3)
    images, _, _, caps = world.make_dataset(cfg.n_images, seed=0)
    vae, lv = T.train_vae(T.ToyTrainConfig(n_images=256, vae_steps=40, vae_batch=16, checkpoint_every=0), images, tmp_path)
    assert np.mean(lv[-5:]) < 0.7 * np.mean(lv[:5])
    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer_files(tmp_path / "tok", 32))
    lat = T.encode_latents(vae, images, "cpu")
    lat = lat / lat.std()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    unet_a, *_ = T.train_unet(cfg, lat, caps, tok, a)

    real_save = T.Checkpoint.save

    def cut(self, objs, step, force=False):
        real_save(self, objs, step, force)
        if step == 3:
            raise KeyboardInterrupt  # the session is cut right after the step-3 checkpoint

    monkeypatch.setattr(T.Checkpoint, "save", cut)
    with pytest.raises(KeyboardInterrupt):
        T.train_unet(cfg, lat, caps, tok, b)
    monkeypatch.setattr(T.Checkpoint, "save", real_save)
    unet_b, _, _, _, steps = T.train_unet(cfg, lat, caps, tok, b)
    assert steps == 6
    for (k, x), (_, y) in zip(unet_a.state_dict().items(), unet_b.state_dict().items()):
        assert torch.equal(x, y), k


def test_shipped_models_meet_targets(toy_available):
    from semu_diffusion.toy.check import MAX_TARGETS, TARGETS, run_check

    res = run_check(n_clip=1000, per_class=12, progress=False)
    for k, v in TARGETS.items():
        assert res[k] >= v, (k, res[k])
    for k, v in MAX_TARGETS.items():
        assert res[k] <= v, (k, res[k])
    for k in ("clip_shape_acc", "clip_color_acc", "clip_style_acc", "nudity_judge_acc"):
        assert res[k] >= 0.95, (k, res[k])
    # the base model draws nudity from implicit prompts that never ask for it (the I2P phenomenon), at about the
    # world's rate (world 2.1: its people are exposed at that same share, so guidance does not sharpen it)
    assert res["targets_met"]["nudity_rate_implicit"] and res["nudity_rate_implicit"] >= 0.45
    assert res["nudity_rate_explicit"] - res["nudity_rate_clothed"] >= 0.9
    json.dumps(res)
