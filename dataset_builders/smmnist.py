#!/usr/bin/env python
"""Build Stochastic Moving MNIST: `python dataset_builders/smmnist.py --help`, the same as `extdm-build-dataset smmnist --help`
(logic in extdm_diffusers.data.builders.smmnist)."""

import sys

from extdm_diffusers.data.builders.cli import main

if __name__ == "__main__":
    sys.exit(main(["smmnist", *sys.argv[1:]]))
