"""benchmarks/diagnose_quickstart.py on a tiny quick start: every section of diagnosis.json, per frame and window, and
the numbers it shares with the evaluation (the autoencoder's ceiling, copying, the rollout) equal to its metrics.json."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import diagnose_quickstart  # noqa: E402
from extdm_diffusers import ExtDMPipeline  # noqa: E402
from extdm_diffusers.pipelines.pipeline_extdm import RolloutAnchor  # noqa: E402
from extdm_diffusers.evaluation.motion_fidelity import (  # noqa: E402
    centroid_error,
    sharpness_ratio,
    stroke_pixel_ratio,
)
from extdm_diffusers.quickstart import main as quickstart_main  # noqa: E402

# 5 observed -> 7 predicted: window 1 has 5 frames, window 2 the last 2
TINY = ["--num_train_videos", "8", "--num_test_videos", "3", "--ae_steps", "2", "--dm_steps", "2", "--ae_batch_size", "4",
        "--dm_batch_size", "2", "--num_inference_steps", "2", "--ae_width", "8", "--feature_width", "32", "--dm_width", "8",
        "--eval_pred_frames", "7"]
# one digit per video (the quick start's default): no two-blob centroids, which would split the digit
FRAME_METRICS = {"psnr", "ssim", "sharpness_ratio", "stroke_pixel_ratio", "centroid_error_px"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("diagnosis") / "qs"
    # not seed 0: the diagnosis must draw the run's own sample seeds without being told
    quickstart_main(["--output_dir", str(out), *TINY, "--seed", "1"])
    return out


def _check_summary(summary, frames, windows):
    assert len(summary["per_frame"]) == frames and len(summary["per_window"]) == windows
    assert np.all(np.isfinite(summary["per_frame"]))
    assert summary["mean"] == pytest.approx(np.mean(summary["per_frame"]))


def test_diagnosis_reports_every_section_and_matches_the_evaluation(run_dir, capsys):
    result = diagnose_quickstart.main(["--run_dir", str(run_dir), "--num_videos", "3", "--batch_size", "2"])
    assert json.loads((run_dir / "diagnosis.json").read_text()) == result
    assert result["settings"] | {"frame_size": None} == {
        "num_videos": 3, "num_samples": 1, "seed": 1, "cond_frames": 5, "window": 5, "horizon": 7, "frame_size": None,
        "num_inference_steps": 2, "eta": 1.0, "use_occlusion": False, "num_digits": 1}

    frames = result["frames"]
    assert frames["frame_numbers"] == list(range(1, 8))
    for method in ("autoencoder", "extdm", "copy_last_frame", "constant_velocity"):
        assert set(frames[method]) == FRAME_METRICS
        for summary in frames[method].values():
            _check_summary(summary, 7, 2)
        assert frames[method]["psnr"]["per_window"][1] == pytest.approx(np.mean(frames[method]["psnr"]["per_frame"][5:]))
    # copying the last observed frame, recomputed from the test clips with the motion-fidelity functions
    clips = ExtDMPipeline.from_pretrained(run_dir / "pipeline").benchmark.clip_dataset(
        run_dir / "data" / "test", "test", num_frames=12, num_videos=3)
    videos = torch.stack([clips[i]["video"] for i in range(3)]).double()
    copied, truth = videos[:, 4:5].expand(-1, 7, -1, -1, -1), videos[:, 5:]
    for name, fn in (("sharpness_ratio", sharpness_ratio), ("stroke_pixel_ratio", stroke_pixel_ratio),
                     ("centroid_error_px", centroid_error)):
        np.testing.assert_allclose(frames["copy_last_frame"][name]["per_frame"], fn(copied, truth).mean(0), rtol=1e-9)

    # the same clips, seeds and definitions as the evaluation (batched here, one clip at a time there)
    evaluation = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    for method in ("autoencoder", "copy_last_frame", "extdm"):
        for metric in ("psnr", "ssim"):
            theirs = evaluation[method][metric]
            theirs = theirs.get("mean_of_samples", theirs)
            np.testing.assert_allclose(frames[method][metric]["per_frame"], theirs["per_frame"], rtol=1e-5, atol=1e-6)
            assert frames[method][metric]["mean"] == pytest.approx(theirs["mean"], rel=1e-5, abs=1e-6)

    still = ("identity_grid", "last_observed_held")
    for section, first, methods in (("motion_window_1", 1, ("extdm", "constant_velocity", *still)),
                                    ("motion_window_2_teacher_forced", 6, ("extdm_teacher_forced", *still))):
        entry = result[section]
        frames_in = 5 if first == 1 else 2
        assert entry["frame_numbers"] == list(range(first, first + frames_in))
        for method in methods:
            assert set(entry[method]) == {"flow_error_px"}  # the quick start's autoencoder has no occlusion maps
            for name, summary in entry[method].items():
                _check_summary(summary, frames_in, 1)
                assert min(summary["per_frame"]) >= 0
    # what the denoiser changed in its guess: the truth's distance from the guess is the guess's own flow error
    change = result["motion_window_1"]["extdm_change_to_the_guess"]
    assert set(change) == {"applied_px", "needed_px", "alignment"}
    np.testing.assert_allclose(change["needed_px"]["per_frame"],
                               result["motion_window_1"]["constant_velocity"]["flow_error_px"]["per_frame"], rtol=1e-9)
    assert all(-1 <= a <= 1 for a in change["alignment"]["per_frame"]) and min(change["applied_px"]["per_frame"]) > 0
    second = result["second_window"]
    assert second["frame_numbers"] == [6, 7]
    for method in ("extdm_rollout", "extdm_teacher_forced", "copy_last_frame", "autoencoder"):
        assert set(second[method]) == FRAME_METRICS
        for summary in second[method].values():
            _check_summary(summary, 2, 1)
    # the rollout's window 2 is the rollout's frames 6 and 7
    assert second["extdm_rollout"]["psnr"]["per_frame"] == pytest.approx(frames["extdm"]["psnr"]["per_frame"][5:])
    assert second["autoencoder"]["ssim"]["per_frame"] == pytest.approx(frames["autoencoder"]["ssim"]["per_frame"][5:])

    # e. the frames split by whether a digit drew a fresh velocity after the observed frames (replayed draws)
    from extdm_diffusers.data.builders import smmnist

    settings = json.loads((run_dir / "quickstart_args.json").read_text())
    paths = smmnist.split_paths(3, settings["num_frames"], settings["frame_size"], seed=0, pool_size=3,
                                digit_size=settings["digit_size"], max_speed=settings["max_speed"],
                                num_digits=settings["num_digits"], moving_digits=settings["moving_digits"],
                                bounce=settings["bounce"])
    mask = np.stack([p.predictable(5)[5:12] for p in paths])
    share = result["frames_predictable"]["videos"]["share"]["per_frame"]
    np.testing.assert_allclose(share, mask.mean(0))
    for method in ("autoencoder", "extdm", "copy_last_frame"):
        full = frames[method]["psnr"]["per_frame"]
        clean = result["frames_predictable"][method]["psnr"]["per_frame"]
        rest = result["frames_after_a_fresh_velocity"][method]["psnr"]["per_frame"]
        for t in range(7):  # the two subsets partition the videos at every frame
            parts = [(a, w) for a, w in ((clean[t], share[t]), (rest[t], 1 - share[t])) if w > 0]
            assert all(a is not None for a, _ in parts)
            assert sum(a * w for a, w in parts) == pytest.approx(full[t])
            assert (clean[t] is None) == (share[t] == 0) and (rest[t] is None) == (share[t] == 1)

    printed = capsys.readouterr().out
    assert "| method | metric | 1 | 2 | 3 | 4 | 5 | 6 | 7 | window 1 | window 2 | mean |" in printed
    assert f"| autoencoder | psnr | {frames['autoencoder']['psnr']['per_frame'][0]:.2f} |" in printed
    assert "| extdm_teacher_forced | flow_error_px |" in printed


def test_the_teacher_forced_window_draws_the_rollouts_noise(run_dir):
    """Conditioned on the rollout's own window 1, the second window sampled apart is the rollout's window 2."""
    pipe = ExtDMPipeline.from_pretrained(run_dir / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    cond = torch.rand(2, 5, 3, 32, 32)
    generators = [torch.Generator().manual_seed(i) for i in range(4)]
    use_occlusion = pipe.flow_autoencoder.estimates_occlusion  # the quick start's has none: plain warps
    output, states = diagnose_quickstart.rollout(pipe, cond, 7, generators, 2, 2, 1.0, use_occlusion)
    assert output.frames.shape == (4, 7, 3, 32, 32) and len(states) == 4
    condition = pipe.encode_condition(cond, use_occlusion).repeat_interleave(2)
    condition = pipe.next_window_condition(condition, output.frames[:, :5], use_occlusion)
    assert pipe.config.rollout_reference == "observed"  # the quick start's: window 2 composed with window 1's last motion
    anchor = RolloutAnchor(cond[:, -1].repeat_interleave(2, dim=0), output.motion[:, 4, :2],
                           output.motion[:, 4, 2:] if use_occlusion else None)
    sample, frames = diagnose_quickstart.denoise_second_window(pipe, condition, generators, states, 2, 1.0, 2,
                                                               use_occlusion, anchor)
    torch.testing.assert_close(frames[:, :2], output.frames[:, 5:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pipe.motion_to_output(sample)[:, :2], output.motion[:, 5:], rtol=1e-5, atol=1e-6)


def test_a_folder_that_is_not_a_quick_start_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="--run_dir .* must be a finished extdm-quickstart --output_dir"):
        diagnose_quickstart.main(["--run_dir", str(tmp_path)])
