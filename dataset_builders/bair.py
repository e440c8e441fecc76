#!/usr/bin/env python
"""Build BAIR robot pushing: `python dataset_builders/bair.py --help`, the same as `extdm-build-dataset bair --help`
(logic in extdm_diffusers.data.builders.bair)."""

import sys

from extdm_diffusers.data.builders.cli import main

if __name__ == "__main__":
    sys.exit(main(["bair", *sys.argv[1:]]))
