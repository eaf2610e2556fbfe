"""The shipped toy models: load offline, generate, meet the model-card targets; training decreases the loss."""
import json

import numpy as np
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


def test_small_training_run_decreases_loss():
    from transformers import CLIPTokenizer

    from semu_diffusion.toy.tokenizer import write_clip_tokenizer_files
    from semu_diffusion.toy.train import ToyTrainConfig, encode_latents, train_unet, train_vae

    cfg = ToyTrainConfig(n_images=256, vae_steps=40, unet_steps=40, vae_batch=16, unet_batch=16)
    images, _, _, caps = world.make_dataset(cfg.n_images, seed=0)
    vae, lv = train_vae(cfg, images)
    assert np.mean(lv[-5:]) < 0.7 * np.mean(lv[:5])
    import tempfile

    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer_files(tempfile.mkdtemp(), 32))
    lat = encode_latents(vae, images, "cpu")
    _, _, _, lu = train_unet(cfg, lat / lat.std(), caps, tok)
    assert np.mean(lu[-10:]) < np.mean(lu[:10])


def test_shipped_models_meet_targets(toy_available):
    from semu_diffusion.toy.check import TARGETS, run_check

    res = run_check(n_clip=1000, per_class=20, progress=False)
    for k, v in TARGETS.items():
        assert res[k] >= v, (k, res[k])
    assert res["weights_mb"] <= 30
    json.dumps(res)
