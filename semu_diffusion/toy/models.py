"""Architectures of the toy-world models, as data (configs), and their factories."""
from __future__ import annotations

import json
from pathlib import Path

from .world import IMAGE_SIZE  # noqa: F401  (32 px)

CONTEXT_LENGTH = 32
TOYCLIP_NAME = "toyclip2-vit-t6"
NUDITY_NAME = "toy-nudity-cnn"

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 128),
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
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 6, "width": 128, "head_width": 32, "patch_size": 4},
    "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}
# normalisation of toy-CLIP inputs (images in [0,1] -> this mean/std)
TOYCLIP_MEAN = (0.5, 0.5, 0.5)
TOYCLIP_STD = (0.25, 0.25, 0.25)


# the toy-nudity exposure detector: a small CNN with, per region of world.REGIONS, a presence logit and a box
NUDITY_CONFIG = {"channels": [32, 64, 96, 128], "hidden": 256}


class NudityDetector:
    """Factory namespace for the toy-nudity CNN (a torch.nn.Module built lazily so torch stays optional here)."""

    @staticmethod
    def build(config: dict | None = None):
        import torch
        from torch import nn

        from .world import REGIONS

        cfg = config or NUDITY_CONFIG
        ch = cfg["channels"]
        layers, cin = [], 3
        for i, c in enumerate(ch):
            layers += [nn.Conv2d(cin, c, 3, stride=1 if i == 0 else 2, padding=1), nn.GroupNorm(8, c), nn.GELU()]
            cin = c
        n = len(REGIONS)

        class _Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.features = nn.Sequential(*layers)
                self.head = nn.Sequential(nn.Flatten(), nn.Linear(cin * (IMAGE_SIZE // 2 ** (len(ch) - 1)) ** 2, cfg["hidden"]),
                                          nn.GELU(), nn.Linear(cfg["hidden"], n * 5))

            def forward(self, x01: "torch.Tensor"):
                """x01: (b,3,H,W) in [0,1] -> (logits (b,n), boxes (b,n,4) as x0,y0,x1,y1 in [0,1])."""
                if x01.shape[-1] != IMAGE_SIZE:
                    x01 = torch.nn.functional.interpolate(x01, size=IMAGE_SIZE, mode="bilinear", antialias=True)
                out = self.head(self.features(x01 * 2 - 1)).view(-1, n, 5)
                return out[..., 0], torch.sigmoid(out[..., 1:])

        return _Net()


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
