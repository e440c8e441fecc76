"""The pictures and the card a user reads: ``per_frame.png`` (evaluation.plots), the labelled GIF grids
(evaluation.gifs), the paired differences behind "significant", and the model card's rows, usage example and
hyperparameters (evaluation.model_card, training.hub)."""

import argparse
import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from extdm_diffusers.evaluation import gifs, model_card
from extdm_diffusers.evaluation.plots import per_frame_figure, write_per_frame_plot
from extdm_diffusers.evaluation.statistics import aggregate, paired_difference
from extdm_diffusers.training.hub import hyperparameters, usage_example


def _result(num_samples=3, lpips=True, cond=2, pred=7, frame_size=32, window=3, benchmark="smmnist", videos=4):
    """A metrics.json dict as the run builds it, from ``aggregate`` of known per-frame values."""
    rng = np.random.default_rng(0)
    records = []
    for _ in range(videos):
        record = {}
        for metric in ("psnr", "ssim") + (("lpips",) if lpips else ()):
            base = np.linspace(20, 14, pred) if metric == "psnr" else np.linspace(0.8, 0.5, pred)
            record[f"extdm/{metric}"] = base + rng.normal(0, 0.01, (num_samples, pred)) + 0.5
            record[f"copy_last_frame/{metric}"] = base - 1.0
            record[f"autoencoder/{metric}"] = base + 2.0
        records.append(record)
    protocol = {"benchmark": benchmark, "split": "test", "cond_frames": cond, "pred_frames": pred, "num_videos": videos,
                "video_stride": 1, "num_samples": num_samples, "seed": 0, "num_inference_steps": 10, "eta": 1.0,
                "use_occlusion": True}
    meta = {"benchmark": benchmark, "benchmark_display_name": "Stochastic Moving MNIST", "protocol": protocol,
            "num_videos": videos, "num_samples": num_samples, "frame_size": frame_size, "window_frames": window}
    return {"metadata": meta, "paper_results": {"fvd": 11.11}, **aggregate(records)}


# ------------------------------------------------------------------------------------------ per_frame.png


def test_per_frame_figure_draws_each_method_per_frame_and_the_window_boundaries():
    result = _result()
    figure = per_frame_figure(result)
    axes = figure.axes
    assert [ax.get_ylabel() for ax in axes] == ["PSNR (dB), higher is better", "SSIM, higher is better",
                                                "LPIPS, lower is better"]
    assert all(ax.get_xlabel() == "predicted frame" for ax in axes)
    title = figure.get_suptitle()
    assert "Stochastic Moving MNIST (smmnist), 2→7 frames at 32×32" in title and "3 samples each" in title
    curves = {line.get_label(): line for line in axes[0].get_lines() if not line.get_label().startswith("_")}
    # the second boundary has no legend entry of its own
    assert set(curves) == {"ExtDM, mean of 3 samples", "ExtDM, best of 3 (oracle)", "copy last frame",
                           "autoencoder (ceiling)", "window boundary"}
    np.testing.assert_allclose(curves["ExtDM, mean of 3 samples"].get_ydata(), result["extdm"]["psnr"]["mean_of_samples"]["per_frame"])
    np.testing.assert_allclose(curves["copy last frame"].get_ydata(), result["copy_last_frame"]["psnr"]["per_frame"])
    assert list(curves["copy last frame"].get_xdata()) == list(range(1, 8))
    # windows of 3 over 7 predicted frames: boundaries after frames 3 and 6
    boundaries = sorted(line.get_xdata()[0] for line in axes[0].get_lines() if line.get_linestyle() == ":" and
                        line.get_color() == "black")
    assert boundaries == [3.5, 6.5]
    legend = figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()][:2] == ["ExtDM, mean of 3 samples", "ExtDM, best of 3 (oracle)"]


def test_one_sample_has_no_best_of_n_curve_and_no_lpips_panel_without_lpips():
    figure = per_frame_figure(_result(num_samples=1, lpips=False, window=None))
    assert len(figure.axes) == 2
    labels = {line.get_label() for line in figure.axes[1].get_lines()}
    assert labels == {"ExtDM, one sample per video", "copy last frame", "autoencoder (ceiling)"}
    assert "1 sample each" in figure.get_suptitle() and "windows" not in figure.get_suptitle()


def test_write_per_frame_plot_writes_a_png_with_the_umask_mode(tmp_path):
    path = write_per_frame_plot(_result(), tmp_path / "per_frame.png")
    image = Image.open(path)
    assert image.format == "PNG" and image.width > 1000 and image.height > 300
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_frame.png"]  # no temporary file left


def test_per_frame_figure_refuses_what_is_not_a_metrics_dict():
    with pytest.raises(ValueError, match="`result` must be an evaluation's metrics.json dict"):
        per_frame_figure({"extdm": {}})
    result = _result()
    result["extdm"] = {"fvd_best": 1.0}
    with pytest.raises(ValueError, match="`result` has no per-frame metric"):
        per_frame_figure(result)


# ------------------------------------------------------------------------------------------ paired differences


def test_paired_difference_interval_and_verdict():
    baseline = np.zeros((4, 2))
    extdm = np.array([1.0, 2.0, 3.0, 4.0])[:, None, None] * np.ones((4, 3, 2))
    win = paired_difference(extdm, baseline, higher_is_better=True)
    half = 1.959963984540054 * np.std([1, 2, 3, 4], ddof=1) / 2
    assert win["mean"] == pytest.approx(2.5) and win["ci95"] == pytest.approx(half)
    assert win["interval"] == pytest.approx([2.5 - half, 2.5 + half]) and win["verdict"] == "win"
    assert paired_difference(extdm, baseline, higher_is_better=False)["verdict"] == "loss"  # LPIPS: higher is worse
    noisy = np.array([-2.0, 2.0, -1.0, 1.5])[:, None, None] * np.ones((4, 1, 2))
    assert paired_difference(noisy, baseline, True)["verdict"] == "not significant"
    one = paired_difference(extdm[:1], baseline[:1], True)
    assert one["interval"] is None and one["verdict"] == "not significant"
    paired = _result()["paired_differences"]
    assert set(paired) == {"copy_last_frame", "autoencoder"}
    assert paired["copy_last_frame"]["psnr"]["verdict"] == "win" and paired["autoencoder"]["psnr"]["verdict"] == "loss"
    assert paired["copy_last_frame"]["psnr"]["mean"] == pytest.approx(1.5, abs=0.02)
    assert paired["copy_last_frame"]["lpips"]["verdict"] == "loss"  # +1.5 LPIPS is worse


# ------------------------------------------------------------------------------------------ GIFs


def test_labelled_frames_label_the_columns_and_count_the_frames():
    rows, cond, pred = 2, 2, 3
    black = torch.zeros(rows, cond + pred, 1, 16, 16)
    images = gifs.labelled_frames([("condition", black), ("truth", black), ("prediction", black)], cond)
    assert len(images) == cond + pred
    scale = gifs.MIN_PANEL_WIDTH // 16
    width, height = images[0].size
    assert width == 3 * 16 * scale + 2 * gifs.GAP and height > rows * 16 * scale
    header = (height - (rows * 16 * scale + gifs.GAP)) // 2
    for t, image in enumerate(images):
        pixels = np.asarray(image)
        for c in range(3):  # each column's label is drawn above its panel
            column = pixels[:header, c * (16 * scale + gifs.GAP) : (c + 1) * 16 * scale]
            assert (column.min(axis=2) > 150).any(), (t, c)
        footer = pixels[-header:]
        red = ((footer[..., 0] > 200) & (footer[..., 1] < 100)).any()
        assert red == (t >= cond), t  # the counter turns red on the predicted frames
    with pytest.raises(ValueError, match="every column of `columns` must have the same"):
        gifs.labelled_frames([("a", black), ("b", black[:1])], cond)
    with pytest.raises(ValueError, match=r"`num_observed` must lie in \[0, 5\]"):
        gifs.labelled_frames([("a", black)], 6)


def test_evaluation_gif_has_four_labelled_panels(tmp_path):
    cond, truth = torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32)
    gifs.write_gif(tmp_path / "clip.gif", cond, truth, truth, torch.rand(3, 3, 32, 32))
    gif = Image.open(tmp_path / "clip.gif")
    assert gif.n_frames == 5 and gif.width == 4 * 96 + 3 * gifs.GAP


# ------------------------------------------------------------------------------------------ the model card


def _pipeline_folder(tmp_path, sample_size=32, channels=3, cond=5):
    folder = tmp_path / "pipeline"
    for name, config in (("flow_autoencoder", {"sample_size": sample_size, "num_channels": channels}),
                         ("unet", {"num_cond_frames": cond, "num_pred_frames": 5})):
        (folder / name).mkdir(parents=True)
        (folder / name / "config.json").write_text(json.dumps(config))
    return folder


def test_card_of_a_small_run_shows_no_paper_row_no_oracle_rows_and_embeds_the_pictures(tmp_path):
    folder = _pipeline_folder(tmp_path, sample_size=32, channels=1)
    result = _result(num_samples=1, lpips=False, cond=5, pred=10, window=5)
    result["metadata"]["protocol"].update(scheduler="ExtDMDDIMScheduler", sampler_preset="original",
                                          scheduler_settings={"eta": 1.0}, denoiser_calls_per_video=20)
    plot = write_per_frame_plot(result, tmp_path / "per_frame.png")
    Image.new("RGB", (4, 4)).save(folder / "predictions.gif")
    model_card.update_model_card(str(folder), result, images=[plot])
    card = (folder / "README.md").read_text()
    assert (folder / "per_frame.png").read_bytes() == plot.read_bytes()
    assert "best of" not in card and "oracle" not in card  # one sample: the oracle rows would repeat the mean
    assert "| ExtDM (one sample per clip) |" in card and "| copy last frame |" in card
    assert "| paper |" not in card
    assert ("The paper's numbers (FVD 11.1) are not shown: this protocol differs in cond→pred frames 5→10 (the "
            "paper: 10→10); frame size 32×32 (the paper: 64×64); samples per video 1 (the paper: 100).") in card
    assert "- copy last frame: PSNR +1.50" in card and "win" in card
    assert card.index("![predictions: condition | truth | prediction](predictions.gif)") < card.index("(per_frame.png)")
    assert "sampler `ExtDMDDIMScheduler` (preset `original`) (eta: 1.0), 10 steps per window, 20 denoiser calls per video" in card
    # a new card gets the pipeline's own usage example: 1 channel, 32 px, 5 observed frames
    assert "torch.rand(1, 5, 1, 32, 32)" in card
    # the eval results of one sample carry no oracle entries either
    assert "oracle" not in card.split("---")[1]


def test_card_of_the_paper_protocol_shows_the_paper_row(tmp_path):
    folder = _pipeline_folder(tmp_path, sample_size=64, cond=10)
    result = _result(num_samples=100, lpips=True, cond=10, pred=10, frame_size=64, window=5, videos=3)
    model_card.update_model_card(str(folder), result)
    card = (folder / "README.md").read_text()
    assert "| paper | 11.1 | – | – | – |" in card and "are not shown" not in card
    assert "| ExtDM, best of 100 (oracle) |" in card and "| ExtDM, mean of 100 samples |" in card
    assert "![" not in card  # no pictures in the folder, none passed
    assert model_card.paper_protocol_differences(result, 64) == []
    result["metadata"]["protocol"].update(scheduler="dpm", scheduler_settings=None, paper_sampler=False)
    assert model_card.paper_protocol_differences(result, 64) == [
        "the sampler (sampler `dpm`, 10 steps per window; the paper: 10 steps of DDIM, eta 1.0)"]
    result["metadata"]["protocol"].update(paper_sampler=True, rollout_reference="observed")
    assert model_card.paper_protocol_differences(result, 64) == [
        "the rollout (rollout_reference observed; the paper: each window warps the last frame decoded before it)"]
    result["metadata"]["protocol"].update(rollout_reference="last_decoded", use_occlusion=False)  # SMMNIST's are on
    assert model_card.paper_protocol_differences(result, 64) == ["occlusion maps off (the paper: on)"]
    assert model_card.paper_protocol_differences(dict(result, metadata=dict(result["metadata"], benchmark="mine")), 64) == [
        "mine is not one of the paper's benchmarks"]


def test_usage_example_and_hyperparameters_read_the_pipeline_and_the_settings():
    example = usage_example({"sample_size": 32, "num_channels": 3}, {"num_cond_frames": 5, "num_pred_frames": 5})
    assert "video = torch.rand(1, 5, 3, 32, 32)" in example and "num_frames=5" in example
    code = example.split("```python\n")[1].split("```")[0]
    assert "from_pretrained" in code and compile(code, "card", "exec")
    args = argparse.Namespace(_argv=["--seed", "0"], learning_rate=2e-3, train_batch_size=None, output_dir="o",
                              model_config='{"num_cond_frames":5,  "channel_mults": [1, 2]}', hub_token="secret",
                              use_ema=False, ema_decay=0.9999, checkpointing_steps=200)
    table = hyperparameters(args)
    assert table.splitlines()[:2] == ["| setting | value |", "| --- | --- |"]
    assert "| `--learning_rate` | `0.002` |" in table and "| `--train_batch_size` | not set |" in table
    assert '| `--model_config` | `{"num_cond_frames": 5, "channel_mults": [1, 2]}` |' in table
    for hidden in ("_argv", "secret", "output_dir", "ema_decay", "checkpointing_steps"):
        assert hidden not in table
    assert "Not set: the benchmark's default" in table
