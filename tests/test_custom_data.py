"""The path of docs/custom_data.md, small: a folder of .mp4 videos -> extdm-build-dataset video_folder -> a benchmark
file over kth -> train_flow_ae and train_dm with it -> evaluation reading the benchmark from the pipeline folder ->
extdm-predict; the refusals on the way name the benchmark key. The documented commands parse with the real
parsers."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from test_predict import TINY_AE, moving_square, write_mp4

from extdm_diffusers.data.video_files import read_video

DOCS = Path(__file__).resolve().parents[1] / "docs"
TINY_UNET = {"base_channels": 8, "channel_mults": [1, 2], "attention_heads": 2, "attention_head_dim": 8,
             "trajectory_attention_heads": 2, "resnet_groups": 4}
MY_VIDEOS = {"base": "kth", "name": "my-videos", "frame_size": 32, "flow_autoencoder": TINY_AE, "train_cond_frames": 2,
             "train_pred_frames": 2, "evaluation": {"cond_frames": 2, "pred_frames": 4, "num_videos": 2, "num_samples": 2,
                                                    "num_inference_steps": 2}}


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    """Built once: the dataset, the benchmark file, the trained autoencoder and pipeline."""
    from extdm_diffusers.data.builders.cli import main as build_dataset
    from extdm_diffusers.training import train_dm, train_flow_ae

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("custom_data")
    raw = root / "my_videos"
    raw.mkdir()
    for i in range(5):
        frames = np.roll(moving_square(12, 40, 48), 3 * i, axis=2)  # landscape: scaled and centre-cropped to 32
        write_mp4(raw / f"clip_{i}.mp4", frames)
    build_dataset(["video_folder", "--raw_dir", str(raw), "--output_dir", str(root / "data"), "--image_size", "32",
                   "--test_fraction", "0.4"])
    benchmark = root / "my-videos.json"
    benchmark.write_text(json.dumps(MY_VIDEOS))
    common = ["--benchmark", str(benchmark), "--dataset_dir", str(root / "data"), "--train_batch_size", "2",
              "--max_train_steps", "2", "--num_validation_videos", "1"]
    try:
        train_flow_ae.main(common + ["--output_dir", str(root / "ae"), "--perceptual_loss", "none"])
        result = train_dm.main(common + ["--output_dir", str(root / "dm"), "--flow_autoencoder", str(root / "ae"),
                                         "--model_config", json.dumps(TINY_UNET), "--validation_inference_steps", "2"])
    finally:
        torch.set_num_threads(threads)
    assert result["global_step"] == 2
    return {"root": root, "raw": raw, "data": str(root / "data"), "benchmark": str(benchmark), "ae": str(root / "ae"),
            "dm": str(root / "dm")}


def test_the_trained_pipeline_records_the_benchmark_file(path):
    from extdm_diffusers import ExtDMPipeline
    from extdm_diffusers.benchmarks import load_benchmark

    recorded = json.loads(Path(path["dm"], "model_index.json").read_text())["benchmark"]
    assert recorded["name"] == "my-videos" and recorded["frame_size"] == 32 and recorded["paper_results"] == {}
    assert (recorded["train_cond_frames"], recorded["train_pred_frames"]) == (2, 2)
    assert recorded["evaluation"]["pred_frames"] == 4
    pipe = ExtDMPipeline.from_pretrained(path["dm"])
    assert pipe.benchmark == load_benchmark(path["benchmark"]).for_models(pipe.flow_autoencoder.config, pipe.unet.config)
    assert pipe.flow_autoencoder.config.num_regions == 2  # the file's autoencoder, no --model_config needed


def test_evaluation_reads_the_benchmark_from_the_pipeline_folder(path, tmp_path, capsys):
    from extdm_diffusers import evaluation

    args = ["--pipeline", path["dm"], "--dataset_dir", path["data"], "--no_fvd", "--no_lpips", "--device", "cpu",
            "--num_gifs", "0"]
    assert evaluation.main(args + ["--output_dir", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["metadata"]["benchmark"] == "my-videos" and metrics["paper_results"] == {}
    protocol = metrics["metadata"]["protocol"]
    assert (protocol["cond_frames"], protocol["pred_frames"], protocol["num_samples"]) == (2, 4, 2)
    assert metrics["metadata"]["num_videos"] == 2
    assert np.isfinite(metrics["extdm"]["psnr"]["best_of_n"]["mean"]) and "psnr" in metrics["copy_last_frame"]

    capsys.readouterr()
    assert evaluation.main(args + ["--output_dir", str(tmp_path / "kth"), "--benchmark", "kth"]) == 1
    assert "`frame_size` is 64 but the pipeline was made for 32 (my-videos)" in capsys.readouterr().err
    assert evaluation.main(args + ["--output_dir", str(tmp_path / "long"), "--pred_frames", "20"]) == 1
    err = capsys.readouterr().err
    assert "fewer than the 22 frames of the benchmark's evaluation.cond_frames + evaluation.pred_frames (2 + 20" in err
    assert not (tmp_path / "long").exists()


def test_predict_from_an_mp4_of_the_folder(path, tmp_path, capsys):
    from extdm_diffusers.predict import main as predict_main

    predict_main(["--pipeline", path["dm"], "--video", str(path["raw"] / "clip_0.mp4"), "--output", str(tmp_path / "next.mp4"),
                  "--num_frames", "4", "--device", "cpu"])
    assert read_video(tmp_path / "next.mp4").frames.shape == (4, 32, 32, 3)
    assert "observing frames 10..11 at 32x32" in capsys.readouterr().out


def test_training_refusals_name_the_benchmark_key(path, tmp_path):
    from extdm_diffusers.training import train_dm
    from extdm_diffusers.training.arguments import TrainingArgumentError

    long = tmp_path / "long.json"
    long.write_text(json.dumps(dict(MY_VIDEOS, train_pred_frames=12)))
    argv = ["--dataset_dir", path["data"], "--output_dir", str(tmp_path / "dm"), "--flow_autoencoder", path["ae"],
            "--model_config", json.dumps(TINY_UNET)]
    with pytest.raises(TrainingArgumentError, match=re.escape(
            "fewer than the 14 frames a 2+12-frame training clip (--benchmark's train_cond_frames + train_pred_frames")):
        train_dm.main(["--benchmark", str(long)] + argv)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(MY_VIDEOS, frame_size=36)))
    with pytest.raises(TrainingArgumentError, match=r"^--benchmark: .*bad.json: `frame_size` 36: the region predictor"):
        train_dm.main(["--benchmark", str(bad)] + argv)
    assert not (tmp_path / "dm").exists()


def _documented_commands():
    """Every command line in docs/custom_data.md's bash blocks (continuations joined, comments dropped)."""
    text = (DOCS / "custom_data.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                yield shlex.split(line)


def test_the_documented_commands_parse_with_the_real_parsers():
    """docs/custom_data.md's commands exist and use only flags the commands take."""
    from extdm_diffusers.evaluation.cli import parse_args as evaluation_args
    from extdm_diffusers.predict import build_parser as predict_parser
    from extdm_diffusers.training import train_dm, train_flow_ae

    parsers = {"training_scripts/train_flow_ae.py": train_flow_ae.parse_args, "training_scripts/train_dm.py": train_dm.parse_args,
               "training_scripts/evaluate.py": evaluation_args, "extdm-predict": predict_parser().parse_args}
    seen = set()
    for words in _documented_commands():
        if words[:2] == ["accelerate", "launch"]:
            words = words[2:]
        if words[0] == "python":
            words = words[1:]
        if words[0] in parsers:
            parsers[words[0]](words[1:])
            seen.add(words[0])
        elif words[0] == "extdm-build-dataset":
            assert words[1] == "video_folder" and {"--raw_dir", "--output_dir"} <= set(words)
            seen.add(words[0])
        elif words[0] == "extdm-benchmark":
            assert words[1] == "show"
            seen.add(words[0])
    assert seen == set(parsers) | {"extdm-build-dataset", "extdm-benchmark"}
