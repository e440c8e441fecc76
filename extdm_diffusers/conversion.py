"""Conversion of original ExtDM checkpoints (github.com/nku-zhichengzhang/ExtDM) to extdm-diffusers models.

Every function takes plain state dicts (what ``torch.load`` of an original ``.pth`` holds) and checks
them strictly: a key that is unknown, missing or of the wrong shape raises an error naming it.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from .models.flow_autoencoder import FlowAutoencoder

StateDict = Mapping[str, torch.Tensor]


class CheckpointConversionError(ValueError):
    """An original checkpoint does not fit the model it is converted to."""


def _load_strict(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], what: str) -> None:
    expected = model.state_dict()
    unknown = sorted(set(state_dict) - set(expected))
    missing = sorted(set(expected) - set(state_dict))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state_dict) & set(expected)
        if state_dict[k].shape != expected[k].shape
    )
    problems = []
    if unknown:
        problems.append(f"unknown keys {unknown}")
    if missing:
        problems.append(f"missing keys {missing}")
    if mis_shaped:
        problems.append(f"mis-shaped keys {mis_shaped}")
    if problems:
        raise CheckpointConversionError(f"{what}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def _rename(state_dict: StateDict, rules: Iterable[Tuple[str, str]], source: str) -> Dict[str, torch.Tensor]:
    """Apply the first matching (regex, replacement) rule to every key; a key no rule matches is unknown."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    renamed, unknown = {}, []
    for key, value in state_dict.items():
        for pattern, replacement in compiled:
            if pattern.fullmatch(key):
                if replacement is not None:
                    renamed[pattern.sub(replacement, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointConversionError(f"{source}: unknown keys {sorted(unknown)}")
    return renamed


# ------------------------------------------------------------------------------------------------------------
# Flow autoencoder
# ------------------------------------------------------------------------------------------------------------
_AUTOENCODER_PARTS = ("generator", "region_predictor", "bg_predictor")


def flow_autoencoder_state_dict_from_original(checkpoint: Mapping[str, StateDict]) -> Dict[str, torch.Tensor]:
    """The state dict of ``FlowAutoencoder`` from ``{"generator": sd, "region_predictor": sd, "bg_predictor": sd}``."""
    missing_parts = [part for part in _AUTOENCODER_PARTS if part not in checkpoint]
    if missing_parts:
        raise CheckpointConversionError(
            f"autoencoder checkpoint lacks {missing_parts}; it must hold the dicts {list(_AUTOENCODER_PARTS)}"
        )
    state_dict = {}
    for part in _AUTOENCODER_PARTS:
        for key, value in checkpoint[part].items():
            if part == "generator" and key.startswith("pixelwise_flow_predictor."):
                state_dict[key] = value  # a sibling of the generator here
            else:
                state_dict[f"{part}.{key}"] = value
    return state_dict


def flow_autoencoder_from_original(checkpoint: Mapping[str, StateDict], flow_params: Mapping) -> FlowAutoencoder:
    """A ``FlowAutoencoder`` from an original autoencoder checkpoint and the original YAML's
    ``flow_params.model_params``."""
    model = FlowAutoencoder(**dict(flow_params))
    _load_strict(model, flow_autoencoder_state_dict_from_original(checkpoint), "autoencoder checkpoint")
    return model.eval()
