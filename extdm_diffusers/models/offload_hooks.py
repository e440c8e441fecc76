"""Offloading hooks for a model's methods other than ``forward`` (the U-Net's ``prepare_condition``, the
autoencoder's ``encode`` and ``decode``)."""

from __future__ import annotations

import functools
from typing import Callable

from diffusers.utils.accelerate_utils import apply_forward_hook

_GROUP_OFFLOADING_HOOK = "group_offloading"  # the name diffusers' `enable_group_offload` registers its hook under


def apply_offload_hooks(method: Callable) -> Callable:
    """``apply_forward_hook`` for a method other than ``forward`` that runs the model's own layers, extended to
    diffusers' group offloading: at block level the layers outside block lists (the U-Net's conv_in and condition
    path, all of the autoencoder's networks) are onloaded by a hook on the model itself, around ``forward`` only."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        registry = getattr(self, "_diffusers_hook", None)
        hook = None if registry is None else registry.get_hook(_GROUP_OFFLOADING_HOOK)
        if hook is None:
            return apply_forward_hook(method)(self, *args, **kwargs)
        args, kwargs = hook.pre_forward(self, *args, **kwargs)
        return hook.post_forward(self, method(self, *args, **kwargs))

    return wrapper
