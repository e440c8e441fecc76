"""A/B of whole predictions at the paper's configurations: this checkout against another version of the package,
the same random weights and inputs, interleaved in one process (so that drift of a shared machine hits both).

    python benchmarks/ab_sampling.py --baseline DIR --configs smmnist kth --repeats 2

DIR holds the other version as ``DIR/extdm_diffusers`` (e.g. ``git archive COMMIT extdm_diffusers | tar -x -C DIR``).
Prints seconds per video of each (median of the repeats), the ratio and the frames' relative difference.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time

import torch

from extdm_diffusers.benchmarks import BENCHMARKS
from profile_unet import load_baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--configs", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    base_pkg = load_baseline(args.baseline)
    rows = []
    for name in args.configs:
        config = BENCHMARKS[name]
        torch.manual_seed(0)
        this = config.random_pipeline()
        base = importlib.import_module(base_pkg.__name__ + ".benchmarks").BENCHMARKS[name].random_pipeline()
        base.unet.load_state_dict(this.unet.state_dict())
        base.flow_autoencoder.load_state_dict(this.flow_autoencoder.state_dict())
        pipes = {"this": this, "baseline": base}
        for p in pipes.values():
            p.set_progress_bar_config(disable=True)
        video = torch.rand(1, config.evaluation.cond_frames, 3, config.frame_size, config.frame_size)

        def run(pipe):
            return pipe(video, num_frames=config.evaluation.pred_frames, num_inference_steps=args.steps, eta=0.0,
                        generator=torch.Generator().manual_seed(0), output_type="pt").frames

        outs = {k: run(p) for k, p in pipes.items()}  # warm-up
        diff = ((outs["this"] - outs["baseline"]).norm() / outs["baseline"].norm()).item()
        times = {k: [] for k in pipes}
        for _ in range(args.repeats):
            for k, p in pipes.items():
                start = time.perf_counter()
                run(p)
                times[k].append(time.perf_counter() - start)
        row = {"config": name, "this_s": statistics.median(times["this"]), "baseline_s": statistics.median(times["baseline"]),
               "rel_difference": diff}
        row["speedup"] = row["baseline_s"] / row["this_s"]
        print(json.dumps(row), flush=True)
        rows.append(row)
        del this, base, pipes, outs


if __name__ == "__main__":
    main()
