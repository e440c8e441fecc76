#!/usr/bin/env python
"""Build UCF-101: `python dataset_builders/ucf101.py --help`, the same as `extdm-build-dataset ucf101 --help`
(logic in extdm_diffusers.data.builders.ucf101)."""

import sys

from extdm_diffusers.data.builders.cli import main

if __name__ == "__main__":
    sys.exit(main(["ucf101", *sys.argv[1:]]))
