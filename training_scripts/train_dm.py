#!/usr/bin/env python
"""Train the ExtDM denoiser: `accelerate launch training_scripts/train_dm.py --help` (logic in extdm_diffusers.training.train_dm)."""

from extdm_diffusers.training.train_dm import main

if __name__ == "__main__":
    main()
