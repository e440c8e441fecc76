"""The quick start end to end with tiny flags: killed during a training stage, run again, it continues from
the stage and checkpoint it reached and writes every artefact with the documented keys."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from extdm_diffusers import ExtDMPipeline
from extdm_diffusers.quickstart import main

TINY = ["--num_train_videos", "24", "--num_test_videos", "3", "--ae_steps", "30", "--dm_steps", "3", "--ae_batch_size", "4", "--dm_batch_size", "2",
        "--checkpointing_steps", "2", "--num_inference_steps", "2", "--ae_width", "8", "--feature_width", "32",
        "--dm_width", "8", "--eval_pred_frames", "6"]


def test_quickstart_resumes_after_a_kill_and_writes_every_artefact(tmp_path, caplog):
    out = tmp_path / "qs"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = tmp_path / "first_run.log"
    with open(log, "w") as stream:
        process = subprocess.Popen([sys.executable, "-m", "extdm_diffusers.quickstart", "--output_dir", str(out), *TINY],
                                   stdout=stream, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    autoencoder_dir = out / "flow_autoencoder"
    deadline = time.time() + 240
    # only the newest checkpoint is kept (--checkpoints_total_limit 1): wait for any complete one
    while not list(autoencoder_dir.glob("checkpoint-*/CHECKPOINT_COMPLETE")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, f"the quick start ended before its first checkpoint:\n{log.read_text()[-3000:]}"
    os.killpg(process.pid, signal.SIGKILL)  # killed in the autoencoder stage, after a checkpoint
    process.wait()
    checkpoints = sorted(autoencoder_dir.glob("checkpoint-*/CHECKPOINT_COMPLETE"), key=lambda p: int(p.parent.name.split("-")[1]))
    assert checkpoints
    latest = checkpoints[-1].parent.name
    state = json.loads((out / "quickstart_state.json").read_text())
    assert state["done"] == ["data"]

    caplog.set_level(logging.INFO)
    metrics = main(["--output_dir", str(out), *TINY])
    assert any("resumed from" in r.getMessage() and latest in r.getMessage() for r in caplog.records)
    state = json.loads((out / "quickstart_state.json").read_text())
    assert state["done"] == ["data", "autoencoder", "denoiser", "evaluation"]

    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics and saved["num_videos"] == 3
    for method in ("extdm", "copy_last_frame", "autoencoder"):
        assert set(saved[method]) == {"psnr", "ssim"} and all(np.isfinite(v) for v in saved[method].values())
    assert "one sample per video" in saved["description"]

    card = (out / "pipeline" / "README.md").read_text()
    assert "model-index" in card and "ExtDMPipeline" in card
    pipe = ExtDMPipeline.from_pretrained(out / "pipeline")
    assert (pipe.num_cond_frames, pipe.num_pred_frames, pipe.flow_autoencoder.config.sample_size) == (5, 5, 32)
    gif = Image.open(out / "predictions.gif")
    assert gif.n_frames == 6 and gif.size == (2 * 3 * 32, 2 * 3 * 32)  # condition | truth | prediction, a row per video

    again = main(["--output_dir", str(out), *TINY])  # a finished run only reports
    assert again == metrics
