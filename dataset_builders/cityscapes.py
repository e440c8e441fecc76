#!/usr/bin/env python
"""Build Cityscapes: `python dataset_builders/cityscapes.py --help`, the same as `extdm-build-dataset cityscapes --help`
(logic in extdm_diffusers.data.builders.cityscapes)."""

import sys

from extdm_diffusers.data.builders.cli import main

if __name__ == "__main__":
    sys.exit(main(["cityscapes", *sys.argv[1:]]))
