"""Recipes match the real SD1.5 / SD2.1 / SDXL UNet configs (built on the meta device, no weights)."""
import pytest
import torch

from semu_diffusion.recipes import all_recipes, recipe_for, select_targets, unet_config_json


@pytest.mark.parametrize("family,n_params,n_targets,kinds", [
    ("sd15", 859_520_964, 154, {"Linear", "Conv2d"}),  # + resnet convs; SD1.x proj_in/out are 1x1 convs
    ("sd21", 865_910_724, 154, {"Linear", "Conv2d"}),  # + resnet convs; SD2.x uses linear projections
    ("sdxl", 2_567_463_684, 280, {"Linear"}),
])
def test_real_configs_match_their_recipe(family, n_params, n_targets, kinds):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config_json(family))
    assert sum(p.numel() for p in unet.parameters()) == n_params
    r = recipe_for(unet.config)
    assert r.family == family
    names = select_targets(unet, r.include, r.exclude)
    assert len(names) == n_targets
    assert {type(unet.get_submodule(n)).__name__ for n in names} == kinds
    assert sum(".attn2.to_" in n for n in names) == 4 * sum(1 for n, _ in unet.named_modules() if n.endswith("attn2"))
    assert not any(".attn1." in n for n in names)


def test_toy_recipe_and_regex_override(random_pipe):
    unet = random_pipe.unet
    r = recipe_for(unet.config)
    assert r.family == "toy"
    names = select_targets(unet, r.include)
    assert any(n.endswith("attn2.to_out.0") for n in names) and any(n.endswith("conv_shortcut") for n in names)
    only_k = select_targets(unet, [r"attn2\.to_k$"])
    assert only_k and all(n.endswith("attn2.to_k") for n in only_k)
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_for(unet.config, "sd99")


def test_every_recipe_parses():
    rs = all_recipes()
    assert {"toy", "sd15", "sd21", "sdxl"} <= set(rs)
    for r in rs.values():
        assert 0 < r.semu["tau"] <= 1 and r.train["steps"] > 0


def test_toy_recipe_uses_the_retain_aware_subspace_and_paper_preset_does_not():
    from semu_diffusion.config import EraseConfig, resolve
    from semu_diffusion.recipes import all_recipes

    toy = all_recipes()["toy"]
    cfg = resolve(EraseConfig(concept="star"), toy)
    assert (cfg.retain_energy, cfg.retain_source, cfg.retain_side) == (0.999, "activation", "in")
    assert resolve(EraseConfig(concept="star", retain_source="gradient"), toy).retain_source == "gradient"
    assert resolve(EraseConfig(concept="star", preset="semu-paper"), toy).retain_energy == 0.0


def test_forget_modifiers_pair_modified_forget_and_anchor_prompts():
    from semu_diffusion.concepts import OBJECT_TEMPLATES, plan_concept, split_words
    from semu_diffusion.config import PAPER_PRESETS, EraseConfig, resolve
    from semu_diffusion.recipes import all_recipes

    toy = all_recipes()["toy"]
    words = split_words(resolve(EraseConfig(concept="star"), toy).forget_modifiers)
    assert words == ["red", "green", "blue"]  # the toy default
    for preset in PAPER_PRESETS:  # the papers' forget sets have no modified prompts
        assert split_words(resolve(EraseConfig(concept="star", preset=preset), toy).forget_modifiers) == []
    assert resolve(EraseConfig(concept="star", forget_modifiers=""), toy).forget_modifiers == ""  # explicit wins
    p = plan_concept("star", default_object_anchors=["circle"], modifiers=["red", "orange", "blue", "green"])
    n = len(OBJECT_TEMPLATES)
    assert len(p.forget_prompts) == len(p.anchor_prompts) == n + 4
    assert p.forget_prompts[n:] == ["a photo of a red star", "an image of an orange star", "a picture of a blue star",
                                    "a photo of a green star"]
    assert p.anchor_prompts[n:] == [f.replace("star", "circle") for f in p.forget_prompts[n:]]
    assert len(plan_concept("star", modifiers=[]).forget_prompts) == n
    # modifiers apply to object templates only: nudity, styles and prompt files keep their own sets
    assert plan_concept("nudity", modifiers=["red"]).forget_prompts == plan_concept("nudity").forget_prompts
    assert plan_concept("Varkon style", modifiers=["red"]).forget_prompts == plan_concept("Varkon style").forget_prompts


def test_forget_bare_adds_the_bare_word_paired_with_the_bare_anchor():
    from semu_diffusion.concepts import OBJECT_TEMPLATES, plan_concept
    import argparse

    from semu_diffusion.config import PAPER_PRESETS, EraseConfig, add_cli_flags, config_from_args, resolve
    from semu_diffusion.recipes import all_recipes

    recipes = all_recipes()
    for fam in ("toy", "sd15"):  # on by default in the toy and SD recipes
        assert resolve(EraseConfig(concept="star"), recipes[fam]).forget_bare is True
    for preset in PAPER_PRESETS:  # the papers' forget sets: the templates only
        assert resolve(EraseConfig(concept="star", preset=preset), recipes["toy"]).forget_bare is False
    parser = argparse.ArgumentParser()
    add_cli_flags(parser)
    cfg = config_from_args(parser.parse_args(["--concept", "star", "--no-forget-bare"]))
    assert resolve(cfg, recipes["toy"]).forget_bare is False
    n = len(OBJECT_TEMPLATES)
    p = plan_concept("star", default_object_anchors=["circle"], modifiers=["red"], bare=True)
    assert p.forget_prompts[n:] == ["star", "a photo of a red star"]  # after the templates, before the modified ones
    assert p.anchor_prompts[n:] == ["circle", "a photo of a red circle"]
    assert plan_concept("star", bare=False).forget_prompts == plan_concept("star").forget_prompts[:n]
    assert plan_concept("star", anchor="", bare=True).anchor_prompts[n] == ""  # the empty anchor stays empty
    assert plan_concept("nudity", bare=True).forget_prompts == plan_concept("nudity").forget_prompts
