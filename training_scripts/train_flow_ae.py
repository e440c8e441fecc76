#!/usr/bin/env python
"""Train the flow autoencoder: `accelerate launch training_scripts/train_flow_ae.py --help` (logic in extdm_diffusers.training.train_flow_ae)."""

from extdm_diffusers.training.train_flow_ae import main

if __name__ == "__main__":
    main()
