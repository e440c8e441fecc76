"""extdm-predict (extdm_diffusers.predict) on a tiny pipeline: .mp4 in, .mp4 / .gif / PNG folder out, frame counts
and sizes, the builder's frame rule on the observed frames, side-by-side panels, samples, every scheduler name,
and every bad input answered with one line and exit code 2."""

import numpy as np
import pytest
import torch

from extdm_diffusers.benchmarks import load_benchmark
from extdm_diffusers.data.video_files import fit_frames, read_video
from extdm_diffusers.predict import main as predict_main
from extdm_diffusers.schedulers import SCHEDULER_NAMES, make_scheduler

TINY_AE = {"num_regions": 2, "region_predictor_params": {"block_expansion": 4, "max_features": 16, "num_blocks": 2},
           "bg_predictor_params": {"block_expansion": 4, "max_features": 16, "num_blocks": 2},
           "generator_params": {"block_expansion": 4, "max_features": 16, "num_bottleneck_blocks": 1,
                                "pixelwise_flow_predictor_params": {"block_expansion": 4, "max_features": 16, "num_blocks": 2}}}
BENCHMARK = {"base": "kth", "name": "tiny-robot", "frame_size": 32, "flow_autoencoder": TINY_AE, "train_cond_frames": 2,
             "train_pred_frames": 3, "evaluation": {"cond_frames": 2, "pred_frames": 6, "num_inference_steps": 2}}



def save_tiny_pipeline(folder, definition) -> None:
    """A random tiny pipeline of the benchmark ``definition`` (seeded), recording its benchmark, saved to ``folder``."""
    benchmark = load_benchmark(definition)
    torch.manual_seed(0)
    pipe = benchmark.random_pipeline(base_channels=8, channel_mults=(1, 2), attention_heads=2, attention_head_dim=4,
                                     resnet_groups=4, trajectory_attention_heads=2)
    pipe.register_to_config(benchmark=benchmark.for_models(pipe.flow_autoencoder.config, pipe.unet.config).to_dict())
    pipe.save_pretrained(folder)

@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on shared cores
    yield
    torch.set_num_threads(threads)


def write_mp4(path, frames, fps=8):
    """(T, H, W, 3) uint8 frames as an H.264 .mp4, with imageio-ffmpeg."""
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(str(path), (frames.shape[2], frames.shape[1]), fps=fps, macro_block_size=1)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def moving_square(num_frames, height, width):
    frames = np.full((num_frames, height, width, 3), 30, np.uint8)
    for t in range(num_frames):
        frames[t, 10 + t : 22 + t, 6 + t : 18 + t] = (220, 180, 40)
    return frames


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    save_tiny_pipeline(root / "pipeline", BENCHMARK)
    portrait = write_mp4(root / "portrait.mp4", moving_square(10, 56, 40))  # 40 wide, 56 high: scaled and cropped
    import imageio.v3 as iio

    iio.imwrite(root / "one.gif", moving_square(1, 32, 32), plugin="pillow")
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    return {"root": root, "pipeline": str(root / "pipeline"), "video": str(portrait)}


def run(assets, output, *extra):
    predict_main(["--pipeline", assets["pipeline"], "--video", assets["video"], "--output", str(output),
                  "--device", "cpu", *extra])


def test_mp4_to_mp4_and_gif_with_the_frame_count_and_size(assets, tmp_path, capsys):
    run(assets, tmp_path / "pred.mp4", "--num_frames", "4")
    written = read_video(tmp_path / "pred.mp4")
    assert written.frames.shape == (4, 32, 32, 3) and written.fps == pytest.approx(8)
    printed = capsys.readouterr().out
    assert "read " in printed and "10 frames of 40x56 at 8 fps; observing frames 8..9 at 32x32, 3 channels" in printed
    assert f"wrote {tmp_path / 'pred.mp4'}: 4 frames of 32x32 at 8 fps" in printed

    run(assets, tmp_path / "pred.gif", "--fps", "5")  # default: one window of the pipeline
    gif = read_video(tmp_path / "pred.gif")
    assert gif.frames.shape == (3, 32, 32, 3) and gif.fps == pytest.approx(5)

    # observed | predicted | truth, over the observed and the predicted frames
    run(assets, tmp_path / "sbs.gif", "--side_by_side", "--start_frame", "5", "--num_frames", "4")
    assert read_video(tmp_path / "sbs.gif").frames.shape == (6, 32, 96, 3)
    run(assets, tmp_path / "end.gif", "--side_by_side", "--num_frames", "4")  # nothing after the end: no truth panel
    assert read_video(tmp_path / "end.gif").frames.shape == (6, 32, 64, 3)


def test_observed_frames_follow_the_builders_frame_rule_and_samples_get_their_own_files(assets, tmp_path):
    run(assets, tmp_path / "frames", "--side_by_side", "--start_frame", "8", "--num_frames", "2", "--num_samples", "2")
    fitted = fit_frames(read_video(assets["video"]).frames, 32, 3)
    for k in (0, 1):
        folder = tmp_path / f"frames-sample{k}"
        frames = read_video(folder).frames  # a folder of PNGs: lossless
        assert sorted(p.name for p in folder.iterdir()) == [f"frame_{i:05d}.png" for i in range(4)]
        assert frames.shape == (4, 32, 96, 3)
        np.testing.assert_array_equal(frames[:2, :, :32], fitted[6:8])    # observed
        np.testing.assert_array_equal(frames[2:, :, :32], fitted[[7, 7]])  # its last frame held
        np.testing.assert_array_equal(frames[:, :, 64:], fitted[6:10])    # truth
    samples = [read_video(tmp_path / f"frames-sample{k}").frames[2:, :, 32:64] for k in (0, 1)]
    assert not np.array_equal(*samples)  # two independent predictions


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_name_predicts(name, assets, tmp_path):
    from extdm_diffusers import ExtDMDDIMScheduler

    scheduler = make_scheduler(name, ExtDMDDIMScheduler(prediction_type="v_prediction").config)
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2" and scheduler.config.prediction_type == "v_prediction"
    assert isinstance(scheduler, ExtDMDDIMScheduler) == (name == "ddim_original")
    run(assets, tmp_path / "out", "--scheduler", name, "--num_inference_steps", "3", "--num_frames", "4")
    assert read_video(tmp_path / "out").frames.shape == (4, 32, 32, 3)


def test_an_unknown_scheduler_name_lists_the_names():
    with pytest.raises(ValueError, match="unknown scheduler 'heun'; choose one of ddim_original, ddim, ddpm, dpm, dpm_sde"):
        make_scheduler("heun", {})


@pytest.mark.parametrize("extra, message", [
    (["--video", "{root}/one.gif"], "--video: {root}/one.gif has 1 frames; the pipeline observes 2"),
    (["--video", "{root}/corrupt.mp4"], "--video: {root}/corrupt.mp4: ffmpeg cannot decode it"),
    (["--video", "{root}/missing.mp4"], "--video: no such file or folder: {root}/missing.mp4"),
    (["--pipeline", "{root}/no-pipeline"], "--pipeline: no such folder: {root}/no-pipeline"),
    (["--pipeline", "{root}"], "--pipeline: {root} holds no model_index.json"),
    (["--scheduler", "heun"], "argument --scheduler: invalid choice: 'heun'"),
    (["--output", "{root}/out.avi"], "--output: cannot write '.avi' files; use .mp4, .gif or a path without extension"),
    (["--output", "{root}/nowhere/out.mp4"], "--output: the folder {root}/nowhere does not exist"),
    (["--start_frame", "1"], "--start_frame 1 leaves 1 frames to observe; the pipeline observes 2"),
    (["--start_frame", "11"], "--start_frame 11 is beyond the video's 10 frames"),
    (["--num_frames", "0"], "--num_frames must be >= 1, got 0"),
    (["--benchmark", "bair"], "--benchmark bair: `frame_size` is 64 but the pipeline was made for 32 (tiny-robot)"),
    (["--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
])
def test_bad_input_is_one_line_naming_the_argument_and_exit_2(extra, message, assets, tmp_path, capsys):
    root = str(assets["root"])
    argv = ["--pipeline", assets["pipeline"], "--video", assets["video"], "--output", str(tmp_path / "out.mp4"), "--device", "cpu"]
    argv += [arg.format(root=root) for arg in extra]
    with pytest.raises(SystemExit) as exit_info:
        predict_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("extdm-predict: error: ") and message.format(root=root) in err
    assert not (tmp_path / "out.mp4").exists()


def test_bf16_on_a_cpu_without_onednn_bf16_warns_and_still_predicts(assets, tmp_path, monkeypatch, caplog):
    import logging

    from extdm_diffusers import cpu_features

    monkeypatch.setattr(cpu_features, "onednn_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger=cpu_features.__name__):
        run(assets, tmp_path / "bf16", "--dtype", "bfloat16", "--num_frames", "2", "--num_inference_steps", "2")
    assert any(r.getMessage().startswith("--dtype bfloat16 on a CPU without AVX-512") for r in caplog.records)
    assert read_video(tmp_path / "bf16").frames.shape == (2, 32, 32, 3)
