"""The whole-prompt-embedding attack and SEMU's robust mode (--robust) on the toy model: the attack's plumbing
(generation from a conditioning, the guided loss it lowers), and a robust erase that keeps SEMU's trainable share
and delta format while recording its settings."""
import json

import numpy as np
import pytest
import torch

from semu_diffusion.attacks import available_attacks


def test_embedding_attacks_are_listed():
    names = available_attacks()
    assert {"embedding", "embedding-neutral"} <= set(names)


def test_generation_from_a_conditioning_equals_the_prompts(toy_available):
    from semu_diffusion.attacks.base import encode
    from semu_diffusion.generation import generate
    from semu_diffusion.loading import load_pipeline

    pipe = load_pipeline("toy")
    with torch.no_grad():
        c = encode(pipe, ["a photo of a star"])
    a = generate(pipe, ["a photo of a star"] * 3, [1, 2, 3], steps=5, progress=False, output_type="latent")
    b = generate(pipe, ["x"] * 3, [1, 2, 3], steps=5, progress=False, output_type="latent", prompt_embeds=c)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    other = generate(pipe, ["x"] * 3, [1, 2, 3], steps=5, progress=False, output_type="latent",
                     prompt_embeds=encode(pipe, ["a photo of a heart"]).detach())
    assert (other - a).abs().max() > 0.1  # the conditioning, not the prompt text, decides


def test_embedding_attack_lowers_the_guided_loss_and_moves_every_position(toy_available):
    from semu_diffusion.attacks.base import guided_diffusion_loss
    from semu_diffusion.attacks.embedding import EmbeddingAttack
    from semu_diffusion.generation import generate
    from semu_diffusion.loading import load_pipeline

    pipe = load_pipeline("toy")
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    lat = generate(pipe, ["a photo of a star"] * 8, list(range(8)), steps=10, progress=False, output_type="latent")
    atk = EmbeddingAttack(pipe, "star", "a photo of a heart", lat, 1, 3e-2, 8, 0, set())
    atk.guidance = 5.0
    atk.setup()

    def fixed_loss():
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return float(np.mean([guided_diffusion_loss(pipe, lat, atk.cond, atk.uncond, 5.0, g) for _ in range(8)]))

    before = fixed_loss()
    for _ in range(30):
        atk.step()
    after = fixed_loss()
    assert after < before * 0.97, (before, after)  # heart's conditioning moved towards drawing the star images
    moved = (atk.cond.detach() - atk.start).abs().amax(dim=-1)[0]
    assert (moved > 0).float().mean() == 1.0  # every position of the sequence is optimised, not a few token slots
    assert atk.conditioning().shape == atk.start.shape
    assert all(p.grad is None for p in pipe.unet.parameters())  # the model is never trained by the attack


def test_robust_erase_records_its_settings_and_keeps_semus_share(toy_available, tmp_path):
    from safetensors import safe_open

    from semu_diffusion import erase
    from semu_diffusion.loading import load_pipeline

    pipe = load_pipeline("toy")
    kw = dict(pipe=pipe, steps=4, forget_n=4, retain_n=4, seed=0, progress=False, log=lambda *x: None)
    plain = erase("star", out=tmp_path / "plain.safetensors", **kw)
    rob = erase("star", out=tmp_path / "rob.safetensors", robust=True, robust_every=2, robust_inner=3,
                robust_restart=1, **kw)
    assert rob.stats["trainable_params"] == plain.stats["trainable_params"]
    assert rob.stats["trainable_frac"] <= 0.005
    with safe_open(str(tmp_path / "rob.safetensors"), "pt") as f:
        prov = json.loads(f.metadata()["semu_provenance"])
        keys = set(f.keys())
    with safe_open(str(tmp_path / "plain.safetensors"), "pt") as f:
        assert set(f.keys()) == keys  # same delta format: the same LoRA tensors
    assert prov["robust"] is True and prov["robust_every"] == 2 and prov["robust_inner"] == 3
    s = prov["robust_summary"]
    assert s["refreshes"] == 2 and s["inner_steps"] == 6  # steps 0 and 2 of 4
    assert s["restarts"] == 1 and prov["robust_restart"] == 1  # the second refresh put conditioning 0 back to its start
    plainp = json.loads(safe_open(str(tmp_path / "plain.safetensors"), "pt").metadata()["semu_provenance"])
    assert plainp["robust"] is False and plainp["robust_summary"] is None
    assert plainp["anchor_rule"] is None and plainp["anchor"] == "circle"  # the recipe's first object anchor
    assert prov["anchor_rule"]["chosen"] == prov["anchor"] == "circle"  # star: circle is the farther of the two
    assert prov["anchor_rule"]["distances"]["circle"] > prov["anchor_rule"]["distances"]["square"]
    # the robust delta differs from the plain one (the adversarial term trained R too), and loads into diffusers
    pipe.load_lora_weights(str(tmp_path / "rob.safetensors"), adapter_name="rob")
    pipe.unload_lora_weights()


def test_robust_is_semus_mode():
    from semu_diffusion.config import ConfigError, EraseConfig, resolve
    from semu_diffusion.recipes import all_recipes

    with pytest.raises(ConfigError, match="--robust is SEMU's"):
        resolve(EraseConfig(concept="star", method="esd-x", robust=True), all_recipes()["toy"])


def test_robust_restart_puts_one_conditioning_back_to_its_start(toy_available):
    from contextlib import nullcontext

    from semu_diffusion.attacks.base import encode
    from semu_diffusion.loading import load_pipeline
    from semu_diffusion.robust import EmbeddingAdversary, RobustConfig

    pipe = load_pipeline("toy")
    pipe.unet.requires_grad_(False)
    with torch.no_grad():
        starts = encode(pipe, ["a photo of a star", "a star"]).float()
        uncond = encode(pipe, [""])
    lat = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    acp = pipe.scheduler.alphas_cumprod.float()
    adv = EmbeddingAdversary(pipe.unet, lat, acp, starts, uncond, RobustConfig(inner=2, restart=1, lr=0.05), 2, "cpu",
                             nullcontext)
    adv.refresh(0)
    moved = (adv.cond.detach() - starts).abs().amax(dim=(1, 2))
    assert (moved > 0).all()  # both conditionings moved
    adv.refresh(5)  # the second refresh restarts conditioning 0 first, then attacks again from there
    assert adv.restarts == 1
    d0 = (adv.cond.detach()[0] - starts[0]).abs().max()
    d1 = (adv.cond.detach()[1] - starts[1]).abs().max()
    assert d0 <= 2 * 0.05 * 1.01 < d1  # 0 restarted: 2 Adam steps from its start (each <= lr); 1 kept going: 4 steps
    st = adv.opt.state[adv.cond]
    assert st["exp_avg"].shape == adv.cond.shape


def test_robust_anchor_is_the_farthest_object_anchor(toy_available):
    from semu_diffusion.api import robust_anchor
    from semu_diffusion.loading import load_pipeline
    from semu_diffusion.recipes import all_recipes

    pipe, recipe = load_pipeline("toy"), all_recipes()["toy"]
    assert recipe.train["object_anchors"][0] == "circle"  # the plain default for ring is the near one
    anchor, rule = robust_anchor(pipe, "cpu", recipe, "ring", None)
    assert anchor == "square" and rule["distances"]["square"] > rule["distances"]["circle"] * 1.2
    assert robust_anchor(pipe, "cpu", recipe, "circle", None) == (None, None)  # one candidate left: the default
    assert robust_anchor(pipe, "cpu", recipe, "nudity", None) == (None, None)  # people keep their clothed anchor
