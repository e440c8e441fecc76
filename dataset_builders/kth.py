#!/usr/bin/env python
"""Build KTH: `python dataset_builders/kth.py --help`, the same as `extdm-build-dataset kth --help`
(logic in extdm_diffusers.data.builders.kth)."""

import sys

from extdm_diffusers.data.builders.cli import main

if __name__ == "__main__":
    sys.exit(main(["kth", *sys.argv[1:]]))
