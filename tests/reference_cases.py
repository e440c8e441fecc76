"""Loading the reference fixtures (outputs of the original ExtDM code, see fixtures/README.md)."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Dict, Tuple

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from fixture_weights import fixture_stats, fixture_weights  # noqa: E402

AUTOENCODER_PARTS = ("generator", "region_predictor", "bg_predictor")

#: diffusers renamed `from_pretrained(torch_dtype=...)` to `dtype=` (the old name now warns); use what the
#: installed release reads, so the tests stay on the non-deprecated name.
DTYPE_ARGUMENT = "dtype" if '"dtype"' in inspect.getsource(DiffusionPipeline.from_pretrained) else "torch_dtype"


def load_case(name: str) -> Tuple[dict, Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """(metadata, stored tensors, the original state dict rebuilt as the fixtures README says)."""
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    tensors = load_file(str(FIXTURES / f"{name}.safetensors"))
    state_dict = fixture_weights(meta["manifest"], meta["seed"])
    state_dict.update(fixture_stats(meta.get("stats_manifest", {}), meta["seed"]))
    state_dict.update({k[len("buffers."):]: v for k, v in tensors.items() if k.startswith("buffers.")})
    return meta, tensors, state_dict


def split_autoencoder(state_dict: Dict[str, torch.Tensor], prefix: str = "") -> Dict[str, Dict[str, torch.Tensor]]:
    """The dict an original autoencoder checkpoint holds."""
    return {
        part: {k[len(prefix + part) + 1 :]: v for k, v in state_dict.items() if k.startswith(f"{prefix}{part}.")}
        for part in AUTOENCODER_PARTS
    }


def diffusion_checkpoint(state_dict: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
    """The dict an original diffusion checkpoint holds."""
    return {"diffusion": {k[len("diffusion."):]: v for k, v in state_dict.items() if k.startswith("diffusion.")}}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.float() - reference.float()).norm() / reference.float().norm()).item()
