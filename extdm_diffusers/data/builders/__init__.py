"""The dataset builders: each turns a benchmark's raw files into the 🤗 ``DatasetDict`` of the shared schema
(``extdm_diffusers.data.video_schema``) that training and evaluation read.

    extdm-build-dataset smmnist --source bundled --output_dir data/smmnist-mini --num_train 2000

``BUILDERS`` names the module of each builder; every one has ``main(argv)`` (its command line, returning the
``DatasetDict``). ``extdm-build-dataset NAME ...`` runs ``BUILDERS[NAME]``; a new builder is one entry here.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict


class BuildError(RuntimeError):
    """A problem the user can fix (missing/corrupt raw file, bad argument); printed without a traceback."""


BUILDERS: Dict[str, str] = {name: f"{__name__}.{name}" for name in ("smmnist", "kth", "bair", "cityscapes", "ucf101", "video_folder")}


def get_builder(name: str) -> ModuleType:
    """The builder module of dataset ``name`` (one of ``BUILDERS``)."""
    if name not in BUILDERS:
        raise KeyError(f"unknown dataset builder {name!r}; choose one of {sorted(BUILDERS)}")
    return importlib.import_module(BUILDERS[name])


__all__ = ["BUILDERS", "BuildError", "get_builder"]
