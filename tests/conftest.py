import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from reference_cases import diffusion_checkpoint, load_case, split_autoencoder  # noqa: E402


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def reference_pipeline_factory():
    """Builds the pipeline of a ``pipeline_*`` fixture case through the public conversion API."""
    from extdm_diffusers.conversion import pipeline_from_original

    def build(case: str):
        meta, tensors, state_dict = load_case(case)
        pipe = pipeline_from_original(
            split_autoencoder(state_dict, "ae."),
            diffusion_checkpoint(state_dict),
            meta["config"],
            meta["original_modules"][1],
            meta["unet_constructor"],
        )
        pipe.set_progress_bar_config(disable=True)
        return meta, tensors, pipe

    return build
