"""Evaluate an ExtDM pipeline with the paper's protocol: a thin wrapper around ``extdm_diffusers.evaluation.main``.

    python training_scripts/evaluate.py --pipeline DIR_OR_REPO --benchmark kth --dataset_dir DIR \
        [--num_samples 100] [--num_videos 256] [--i3d PATH] [--batch_size N] [--output_dir OUT] [--update_model_card]
        [--scheduler ddim_original|ddim|ddpm|dpm|dpm_sde|unipc|euler|euler_ancestral] [--num_inference_steps 10]
        [--eta 1.0] [--sampler_preset protocol|fast]

The sampler defaults to the paper's (``ddim_original``, 10 steps per window, eta 1); any other prints and records
in metrics.json that its numbers are not the paper's protocol (docs/pipeline.md, "By name").

Shard the clips over processes with ``accelerate launch --multi_gpu --num_processes K training_scripts/evaluate.py ...``
(also on a machine without GPUs) or ``torchrun --nproc_per_node K training_scripts/evaluate.py ...``. See
docs/evaluation.md.
"""

import sys

from extdm_diffusers.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
