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
import pytest
from PIL import Image

from extdm_diffusers import ExtDMPipeline
from extdm_diffusers.evaluation.gifs import GAP
from extdm_diffusers.quickstart import data_description, main, parse_args

TINY = ["--num_train_videos", "24", "--num_test_videos", "3", "--ae_steps", "30", "--dm_steps", "3", "--ae_batch_size", "4", "--dm_batch_size", "2",
        "--checkpointing_steps", "2", "--num_inference_steps", "2", "--ae_width", "8", "--feature_width", "32",
        "--dm_width", "8", "--eval_pred_frames", "6"]


def test_quickstart_resumes_after_a_kill_and_writes_every_artefact(tmp_path, caplog, capsys):
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
        for metric in ("psnr", "ssim"):  # the per-frame means average to the means
            assert len(saved["per_frame"][method][metric]) == 6
            assert np.mean(saved["per_frame"][method][metric]) == pytest.approx(saved[method][metric], rel=1e-9)
    assert "one sample per video" in saved["description"]
    for metric in ("psnr", "ssim"):  # ExtDM - copying, paired per video
        diff = saved["extdm_minus_copy_last_frame"][metric]
        assert diff["mean"] == pytest.approx(saved["extdm"][metric] - saved["copy_last_frame"][metric], abs=1e-9)
        assert diff["interval"][0] <= diff["mean"] <= diff["interval"][1]
        assert diff["verdict"] in ("win", "loss", "not significant")
        frames = saved["extdm_at_least_copy_last_frame"][metric]
        ours, copied = saved["per_frame"]["extdm"][metric], saved["per_frame"]["copy_last_frame"][metric]
        assert frames == {"frames": sum(a >= b for a, b in zip(ours, copied)), "of": 6}
    said = capsys.readouterr().out
    assert "the autoencoder estimates no occlusion maps (--no-ae_occlusion" in said  # where it differs from the paper
    printed = said.strip().splitlines()[-1]
    assert "(paired 95% interval): PSNR " in printed and "per_frame.png" in printed
    assert any(word in printed for word in ("significant win", "not significant", "significant loss"))

    # the card a user would publish: the pipeline's own sizes, no paper or oracle rows for this protocol, pictures
    card = (out / "pipeline" / "README.md").read_text()
    assert "model-index" in card and "ExtDMPipeline" in card
    assert "torch.rand(1, 5, 3, 32, 32)" in card and "64, 64" not in card
    assert "| paper |" not in card and "best of" not in card and "_argv" not in card
    assert "| `--max_train_steps` | `3` |" in card
    # the data it was trained on, as built: the quick start's is not the benchmark's SMMNIST
    assert ("The training split as built (`train/extdm_build.json`): `smmnist_rows` with `source` \"bundled\", "
            "`num_frames` 20, `image_size` 32, `digit_size` 16, `max_speed` 1, `num_digits` 1, `moving_digits` true, "
            "`bounce` \"random\", `num_videos` 24") in card
    for picture in ("predictions.gif", "per_frame.png"):
        assert f"]({picture})" in card and (out / "pipeline" / picture).is_file()
    assert (out / "per_frame.png").is_file() and (out / "evaluation" / "per_frame.png").is_file()
    pipe = ExtDMPipeline.from_pretrained(out / "pipeline")
    assert (pipe.num_cond_frames, pipe.num_pred_frames, pipe.flow_autoencoder.config.sample_size) == (5, 5, 32)
    # later windows warp the last observed frame (the motion composed), and the evaluation records it
    assert pipe.config.rollout_reference == "observed"
    evaluated = json.loads((out / "evaluation" / "metrics.json").read_text())["metadata"]["protocol"]
    assert evaluated["rollout_reference"] == "observed"
    # every predicted frame a plain warp: an autoencoder without occlusion maps, evaluated without them
    assert not pipe.flow_autoencoder.estimates_occlusion and evaluated["use_occlusion"] is False
    gif = Image.open(out / "predictions.gif")
    # condition | truth | prediction, labelled, a row per video: 5 observed frames, then 6 predicted
    assert gif.n_frames == 5 + 6 and gif.width == 3 * 96 + 2 * GAP and gif.height > 3 * 96

    again = main(["--output_dir", str(out), *TINY])  # a finished run only reports
    assert again == metrics


def test_quickstart_data_defaults_move_every_digit_at_one_pixel_a_frame_and_say_so():
    args = parse_args([])
    assert (args.max_speed, args.moving_digits, args.digit_size, args.frame_size, args.num_digits) == (1, True, 16, 32, 1)
    assert data_description(args).startswith("the data: 1 digit of 16 px in 32 x 32 frames")
    assert "the paper's SMMNIST: 2 digits of 32 px" in data_description(args)
    assert "the data: 2 digits of 16 px" in data_description(parse_args(["--num_digits", "2"]))
    assert "at most 1 px a frame, every digit moving" in data_description(args)
    assert "up to 4 px a frame" in data_description(args)  # beside the paper's
    own = parse_args(["--no-moving_digits", "--max_speed", "2"])
    assert not own.moving_digits and "at most 2 px a frame, a digit drawn at rest stays at rest" in data_description(own)
    assert (parse_args(["--preset", "long"]).max_speed, parse_args(["--preset", "long"]).num_digits) == (1, 1)  # the long preset keeps the data
    assert "a fresh random velocity at a wall, as in SMMNIST" in data_description(args) and args.bounce == "random"
    assert "mirrored at a wall (Moving MNIST's" in data_description(parse_args(["--bounce", "reflect"]))


def test_quickstart_denoiser_refines_a_reflected_constant_velocity_guess_and_the_pipeline_keeps_it(tmp_path, capsys):
    from extdm_diffusers.quickstart import denoiser_config

    args = parse_args([])
    config = denoiser_config(args)
    assert (config["motion_prior"], config["motion_latent_scale"], args.dm_steps) == ("constant_velocity_reflected", 20.0, 320)
    assert "motion_prior" not in denoiser_config(parse_args(["--dm_motion_prior", "none"]))  # the original's
    assert "motion_prior_residual_scaling" not in config  # one scale for every frame unless asked
    scaled = denoiser_config(parse_args(["--dm_residual_scaling", "by_frame"]))
    assert scaled["motion_prior_residual_scaling"] == "by_frame"
    assert "motion_prior_input" not in config  # reads only the motion measured from the guess unless asked
    assert denoiser_config(parse_args(["--dm_motion_prior_input"]))["motion_prior_input"] is True
    # the saved pipeline's denoiser measures its motion from that guess
    from extdm_diffusers import ExtDMUNet3DModel

    unet = ExtDMUNet3DModel(**dict(config, cond_feature_channels=8, base_channels=8, attention_heads=1, attention_head_dim=8))
    unet.save_pretrained(tmp_path / "unet")
    reloaded = ExtDMUNet3DModel.from_pretrained(tmp_path / "unet")
    assert (reloaded.config.motion_prior, reloaded.config.motion_latent_scale) == ("constant_velocity_reflected", 20.0)
    assert reloaded.config.motion_prior_residual_scaling is None
    assert reloaded.config.motion_prior_input is False


def test_quickstart_autoencoder_warps_without_occlusion_maps_by_default():
    from extdm_diffusers import FlowAutoencoder
    from extdm_diffusers.quickstart import autoencoder_config

    default, paper = parse_args([]), parse_args(["--ae_occlusion"])
    assert not default.ae_occlusion and paper.ae_occlusion
    assert not FlowAutoencoder(**autoencoder_config(default)).estimates_occlusion
    assert FlowAutoencoder(**autoencoder_config(paper)).estimates_occlusion
    # read from a config without building the model (what the evaluation does with a saved pipeline)
    assert FlowAutoencoder.config_estimates_occlusion(autoencoder_config(default)["generator_params"]) is False
    assert FlowAutoencoder.config_estimates_occlusion(autoencoder_config(paper)["generator_params"]) is True


def test_quickstart_passes_mixed_precision_to_both_trainings(tmp_path, capsys):
    from extdm_diffusers.quickstart import _training_argv

    assert parse_args([]).mixed_precision == "no"  # fp32: bf16 is slower without bf16 instructions (AVX2 only)
    for value in ("no", "bf16"):
        argv = _training_argv(parse_args(["--mixed_precision", value]), tmp_path, tmp_path / "stage", 1, 1e-3,
                              "constant", 2, {})
        assert argv[argv.index("--mixed_precision") + 1] == value
    with pytest.raises(SystemExit):
        parse_args(["--mixed_precision", "fp16"])  # fp16 autocast is not offered on the CPU
    assert "--mixed_precision: invalid choice: 'fp16'" in capsys.readouterr().err
