"""ExtDM's evaluation protocol (the original ``scripts/DM/valid.py``), resumable and shardable.

    from extdm_diffusers.evaluation import EvaluationConfig, evaluate

    metrics = evaluate(EvaluationConfig(pipeline="extdm-kth", benchmark="kth", dataset_dir="kth_dataset",
                                        output_dir="eval_kth", i3d="i3d_torchscript.pt"))

or ``python training_scripts/evaluate.py --pipeline ... --benchmark kth --dataset_dir ...`` (``main``).

What happens, and where (``docs/evaluation.md``, "Evaluation protocol", has the full story and every difference
from the original):

1. ``config``: the benchmark registry (``extdm_diffusers.benchmarks``) gives the protocol (cond/pred frames,
   split, 256 test clips, 100 samples per clip, seed 1000, 10 DDIM steps, eta 1, occlusion on or off), which
   the run's settings may override. Sample ``k`` of clip ``i`` is drawn with its own CPU generator seeded
   ``seed + i * num_samples + k``, so the numbers depend neither on the batch size nor on how clips are split
   over processes.
2. ``per_clip``: PSNR, SSIM and LPIPS of every predicted frame of every sample; I3D features of every sample's
   full clip (GT condition + prediction) and of the real clip; the same for two baselines, ``copy_last_frame``
   and ``autoencoder`` (the flow autoencoder's reconstruction of the true future from its true motion);
   ``gifs`` draws the first clips.
3. ``records``: each finished clip is committed as ``features/clip_XXXXX.npz`` (atomic) and one line of
   ``per_video*.jsonl`` (append-only); a restarted run skips finished clips.
4. ``run``: the clips still to do, split over the processes (accelerate), then ``metrics.json`` from the
   committed files only (``statistics``), so one process, several processes and a resumed run give the same
   numbers; ``model_card`` writes them into the pipeline's ``README.md``.
5. ``cli``: ``training_scripts/evaluate.py``'s flags.
"""

from .cli import main, parse_args
from .config import FRAME_METRICS, METHODS, EvaluationConfig, EvaluationError, sample_seed
from .model_card import update_model_card
from .run import evaluate
from .statistics import aggregate, aggregate_frame_metric, fvd_best, fvd_traj, summarize

__all__ = [
    "EvaluationConfig",
    "evaluate",
    "main",
    "parse_args",
    "sample_seed",
    "summarize",
    "aggregate_frame_metric",
    "fvd_traj",
    "fvd_best",
    "aggregate",
    "update_model_card",
    "METHODS",
    "FRAME_METRICS",
    "EvaluationError",
]
