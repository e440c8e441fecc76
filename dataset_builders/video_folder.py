#!/usr/bin/env python
"""Build a dataset from your own folder of videos: `python dataset_builders/video_folder.py --help`, the same as
`extdm-build-dataset video_folder --help` (logic in extdm_diffusers.data.builders.video_folder)."""

import sys

from extdm_diffusers.data.builders.cli import main

if __name__ == "__main__":
    sys.exit(main(["video_folder", *sys.argv[1:]]))
