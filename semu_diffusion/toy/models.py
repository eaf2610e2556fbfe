"""Architectures of the toy-world models, as data (configs), and their factories."""
from __future__ import annotations

import json
from pathlib import Path

IMAGE_SIZE = 32
CONTEXT_LENGTH = 32
TOYCLIP_NAME = "toyclip-vit-t4"

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=IMAGE_SIZE,
)

UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 4,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    block_out_channels=(64, 128),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=16,
    use_linear_projection=False,
)

TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=CONTEXT_LENGTH,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
    projection_dim=64,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)

TOYCLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 4, "width": 128, "head_width": 32, "patch_size": 4},
    "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}
# normalisation of toy-CLIP inputs (images in [0,1] -> this mean/std)
TOYCLIP_MEAN = (0.5, 0.5, 0.5)
TOYCLIP_STD = (0.25, 0.25, 0.25)


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def register_toyclip_config() -> str:
    """Make the toy-CLIP architecture known to open_clip's factory; returns its model name."""
    import open_clip
    from open_clip import factory

    if TOYCLIP_NAME not in factory._MODEL_CONFIGS:
        factory._MODEL_CONFIGS[TOYCLIP_NAME] = json.loads(json.dumps(TOYCLIP_CONFIG))
    assert TOYCLIP_NAME in open_clip.list_models()
    return TOYCLIP_NAME


def build_toyclip():
    import open_clip

    return open_clip.create_model(register_toyclip_config(), pretrained=None)


def write_toyclip_config(path: Path) -> None:
    path.write_text(json.dumps(TOYCLIP_CONFIG, indent=2))


def build_random_pipeline(out_dir, seed: int = 0, unet_config: dict | None = None):
    """Save a randomly initialised toy-architecture StableDiffusionPipeline folder (for tests and benchmarks)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    from .tokenizer import write_clip_tokenizer_files

    out = Path(out_dir)
    tok_dir = write_clip_tokenizer_files(out / "_tokenizer", CONTEXT_LENGTH)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**(unet_config or UNET_CONFIG))
    pipe = StableDiffusionPipeline(vae=build_vae(), text_encoder=build_text_encoder(), tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
                                   unet=unet, scheduler=build_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out / "pipeline", safe_serialization=True)
    return out / "pipeline"
