"""Evaluate an ExtDM pipeline with the paper's protocol: a thin wrapper around ``extdm_diffusers.evaluation.main``.

    python training_scripts/evaluate.py --pipeline DIR_OR_REPO --benchmark kth --dataset_dir DIR \
        [--num_samples 100] [--num_videos 256] [--i3d PATH] [--batch_size N] [--output_dir OUT] [--update_model_card]

Shard the clips over processes with ``accelerate launch --multi_gpu --num_processes K training_scripts/evaluate.py ...``
(also on a machine without GPUs) or ``torchrun --nproc_per_node K training_scripts/evaluate.py ...``. See
docs/evaluation.md.
"""

import sys

from extdm_diffusers.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
