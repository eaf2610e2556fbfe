import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def random_pipeline_dir(tmp_path_factory):
    """A randomly initialised toy-architecture StableDiffusionPipeline saved to disk."""
    from semu_diffusion.toy.models import build_random_pipeline

    return build_random_pipeline(tmp_path_factory.mktemp("randpipe"), seed=0)


@pytest.fixture()
def random_pipe(random_pipeline_dir):
    from semu_diffusion.loading import load_pipeline

    return load_pipeline(str(random_pipeline_dir))


@pytest.fixture(scope="session")
def toy_available():
    from semu_diffusion.toy import shipped_available

    if not shipped_available():
        pytest.fail("the shipped toy weights are missing from semu_diffusion/toy/weights")
    return True


def unet_out(unet, seed=0):
    """UNet output on a fixed small random input (2 samples, 8x8 latents, 32x64 text states): for exactness checks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500])
    e = torch.randn(2, 32, 64, generator=g)
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=e).sample
