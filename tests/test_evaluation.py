"""The evaluation protocol (extdm_diffusers.evaluation, training_scripts/evaluate.py): clip selection, metric
aggregation, and the CLI end to end on a tiny pipeline and dataset (resume, two processes, model card)."""

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import scipy.stats as st
import torch
from PIL import Image

from extdm_diffusers import evaluation
from extdm_diffusers.benchmarks import EvaluationProtocol, get_benchmark
from extdm_diffusers.data import encode_frames, video_features
from extdm_diffusers.evaluation import aggregate_frame_metric, fvd_best, fvd_traj, sample_seed, summarize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    # the models are tiny: more threads only add contention on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ clip selection


def _dataset(num_videos: int, num_frames: int = 10, size: int = 32, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_videos):
        # a bright square that moves one pixel per frame over a noisy background
        base = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        frames = np.repeat(base[None], num_frames, axis=0)
        for t in range(num_frames):
            y, x = 4 + i % 5, 4 + t
            frames[t, y : y + 10, x : x + 10] = 220
        rows.append({"video": encode_frames(frames), "num_frames": num_frames, "id": f"v{i}"})
    return datasets.Dataset.from_list(rows, features=video_features())


def test_evaluation_clips_follow_the_original_rule():
    # KTH's test split has 120 videos: 256 clips from round(i / 255 * 119), start frame 0, duplicates kept
    clips = get_benchmark("kth").clip_dataset(_dataset(120, num_frames=50, size=8), "test")
    assert clips.video_indices == [round(i / 255 * 119) for i in range(256)]
    item = clips[255]
    assert item["video_index"] == 119 and item["start_frame"] == 0 and item["video"].shape[0] == 50
    config = evaluation.EvaluationConfig(pipeline="p", benchmark="KTH", dataset_dir="d")
    assert config.protocol() == EvaluationProtocol(
        split="test", cond_frames=10, pred_frames=40, num_videos=256, video_stride=1, num_samples=100, seed=1000,
        num_inference_steps=10, eta=1.0, use_occlusion=False,
    )
    assert config.protocol_record() == {
        "benchmark": "kth", "split": "test", "cond_frames": 10, "pred_frames": 40, "num_videos": 256, "video_stride": 1,
        "num_samples": 100, "seed": 1000, "num_inference_steps": 10, "eta": 1.0, "use_occlusion": False,
        "scheduler": "ddim_original", "sampler_preset": None, "paper_sampler": True,
        "scheduler_settings": {"class": "ExtDMDDIMScheduler", "schedule": "the original's (ExtDMDDIMScheduler)", "eta": 1.0},
    }
    # overrides stay typed; an int eta is recorded as the float the CLI would give
    overridden = evaluation.EvaluationConfig(pipeline="p", benchmark="kth", dataset_dir="d", num_samples=3, eta=0,
                                             use_occlusion=True).protocol()
    assert (overridden.num_samples, overridden.eta, overridden.use_occlusion, overridden.seed) == (3, 0.0, True, 1000)
    assert isinstance(overridden.eta, float)
    assert sample_seed(1000, 3, 7, 100) == 1307


def test_a_pipeline_whose_autoencoder_has_no_occlusion_maps_is_evaluated_as_plain_warps(tmp_path, monkeypatch):
    """SMMNIST's protocol decodes with occlusion maps; an autoencoder without them is evaluated without, as train_dm
    and extdm-predict do, unless --use_occlusion asks otherwise (then the pipeline names the mismatch)."""
    import huggingface_hub.constants

    from extdm_diffusers import FlowAutoencoder

    # a Hub name is not looked up (no network in tests; asking the Hub would only retry for 20 s)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    small = {"block_expansion": 8, "max_features": 16, "num_blocks": 2}
    for estimates in (False, True):
        FlowAutoencoder(num_regions=2, sample_size=32, region_predictor_params=small, bg_predictor_params=small,
                        generator_params={"block_expansion": 8, "max_features": 16, "num_bottleneck_blocks": 1,
                                          "pixelwise_flow_predictor_params": dict(small, estimate_occlusion_map=estimates)},
                        ).save_pretrained(tmp_path / str(estimates) / "flow_autoencoder")
        config = evaluation.EvaluationConfig(pipeline=str(tmp_path / str(estimates)), benchmark="smmnist", dataset_dir="d")
        assert config.protocol().use_occlusion is estimates
    asked = evaluation.EvaluationConfig(pipeline=str(tmp_path / "False"), benchmark="smmnist", dataset_dir="d",
                                        use_occlusion=True)
    assert asked.protocol().use_occlusion is True
    # no readable autoencoder (a Hub name offline): the protocol's setting stands
    assert evaluation.EvaluationConfig(pipeline="p", benchmark="smmnist", dataset_dir="d").protocol().use_occlusion is True
    # the one rule that training's validation, extdm-predict and extdm-evaluate read
    from extdm_diffusers.benchmarks import BENCHMARKS
    for benchmark in BENCHMARKS.values():
        assert benchmark.evaluation.decodes_with_occlusion(False) is False
        assert benchmark.evaluation.decodes_with_occlusion(True) is benchmark.evaluation.use_occlusion


# ------------------------------------------------------------------------------------------ aggregation


def test_summarize_is_the_original_metric_stuff():
    values = np.array([1.0, 2.0, 4.0, 7.0])
    out = summarize(values)
    avg = values.mean()
    expected_ci = avg - st.norm.interval(confidence=0.95, loc=avg, scale=st.sem(values))[0]
    assert out["mean"] == avg and out["std"] == values.std() and out["n"] == 4
    assert out["ci95"] == pytest.approx(expected_ci, rel=1e-12)
    assert out["ci95"] == pytest.approx(1.959963984540054 * values.std(ddof=1) / 2, rel=1e-12)
    assert summarize([3.0])["ci95"] is None


def test_best_of_n_picks_per_video_and_per_metric():
    # 2 videos, 3 samples, 2 frames
    psnr = np.array([[[10, 12], [30, 32], [20, 20]], [[5, 5], [6, 8], [40, 0]]], float)
    out = aggregate_frame_metric(psnr, higher_is_better=True)
    # per-sample means: video 0 -> 11, 31, 20 (max 31); video 1 -> 5, 7, 20 (max 20)
    assert out["best_of_n"]["mean"] == pytest.approx((31 + 20) / 2)
    assert out["best_of_n"]["per_frame"] == pytest.approx([(30 + 40) / 2, (32 + 0) / 2])
    assert out["mean_of_samples"]["mean"] == pytest.approx(((11 + 31 + 20) / 3 + (5 + 7 + 20) / 3) / 2)
    assert out["mean_of_samples"]["per_frame"] == pytest.approx([psnr[..., 0].mean(), psnr[..., 1].mean()])
    lpips = aggregate_frame_metric(psnr, higher_is_better=False)  # min: 11 and 5
    assert lpips["best_of_n"]["mean"] == pytest.approx(8) and lpips["best_of_n"]["selection"] == "min"


def test_fvd_traj_and_fvd_best_on_known_features():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(64, 8))
    shift = np.full(8, 0.5)
    # sample 0 is the real feature shifted (same covariance), sample 1 the real feature itself
    generated = np.stack([real + shift, real, real + 2 * shift], axis=1)
    traj = fvd_traj(real, generated)
    assert traj["values"] == pytest.approx([8 * 0.25, 0.0, 8 * 1.0], abs=1e-6)
    assert traj["mean"] == pytest.approx(np.mean([2.0, 0.0, 8.0]), abs=1e-6) and traj["n"] == 3
    best = fvd_best(real, generated)
    assert best["selected"] == [1] * 64 and best["value"] == pytest.approx(0.0, abs=1e-6)
    # per video the L1-closest sample, whatever its index
    mixed = generated.copy()
    mixed[:32, [0, 1]] = mixed[:32, [1, 0]]
    assert fvd_best(real, mixed)["selected"] == [0] * 32 + [1] * 32


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from extdm_diffusers.models import ExtDMUNet3DModel, FlowAutoencoder
    from extdm_diffusers.pipelines import ExtDMPipeline
    from extdm_diffusers.schedulers import ExtDMDDIMScheduler

    root = tmp_path_factory.mktemp("evaluation_assets")
    torch.manual_seed(0)
    small = {"block_expansion": 4, "max_features": 16, "num_blocks": 2}
    autoencoder = FlowAutoencoder(
        num_regions=2, sample_size=32, bg_predictor_params=dict(small, bg_type="affine"),
        region_predictor_params=dict(small, scale_factor=0.5),
        generator_params={"block_expansion": 8, "max_features": 16, "num_down_blocks": 2, "num_bottleneck_blocks": 1,
                          "pixelwise_flow_predictor_params": dict(small, scale_factor=0.5)},
    ).eval()
    unet = ExtDMUNet3DModel(num_cond_frames=2, num_pred_frames=3, cond_feature_channels=autoencoder.feature_channels,
                            base_channels=8, channel_mults=(1, 2), attention_heads=2, attention_head_dim=4,
                            trajectory_attention_heads=2, resnet_groups=4).eval()
    ExtDMPipeline(autoencoder, unet, ExtDMDDIMScheduler()).save_pretrained(root / "pipeline")
    datasets.DatasetDict({"test": _dataset(3)}).save_to_disk(str(root / "data"))

    class StandInI3D(torch.nn.Module):  # the StyleGAN-V detector's call signature
        def forward(self, x: torch.Tensor, rescale: bool, resize: bool, return_features: bool) -> torch.Tensor:
            # 12 features instead of 400: the Fréchet distance of 400-d features costs seconds per call
            return torch.cat([x.mean(dim=(1, 3, 4))[:, :6], x.std(dim=(1, 3, 4))[:, :6]], dim=1)

    torch.jit.save(torch.jit.script(StandInI3D()), str(root / "i3d.pt"))
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    state = {}
    for i, shape in shapes.items():
        state[f"features.{i}.weight"] = torch.randn(shape) * 0.05
        state[f"features.{i}.bias"] = torch.zeros(shape[0])
    torch.save(state, root / "alexnet.pth")
    return root


def _args(assets: Path, out: Path, *extra: str) -> list:
    # BAIR's protocol (2 -> 28) cut to 5 predicted frames (2 windows of 3) to stay fast
    return ["--pipeline", str(assets / "pipeline"), "--benchmark", "bair", "--dataset_dir", str(assets / "data"),
            "--output_dir", str(out), "--num_videos", "4", "--num_samples", "3", "--num_inference_steps", "2",
            "--pred_frames", "5", "--batch_size", "2", "--i3d", str(assets / "i3d.pt"),
            "--lpips_weights", str(assets / "alexnet.pth"), "--num_gifs", "1", "--device", "cpu", *extra]


def _numbers(path: Path) -> dict:
    result = json.loads(path.read_text())
    result.pop("metadata")
    return result


def _assert_same_numbers(a: Path, b: Path) -> None:
    # The per-video values and features must be identical. The Fréchet distance's sqrtm goes through the BLAS,
    # whose result on these singular covariances depends on its thread count (~1e-9 relative), so FVDs may differ
    # in the last digits between processes with different thread settings.
    def walk(x, y, where):
        if isinstance(x, dict):
            assert set(x) == set(y), where
            for key in x:
                walk(x[key], y[key], f"{where}/{key}")
        elif isinstance(x, list):
            assert len(x) == len(y), where
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{where}[{i}]")
        elif isinstance(x, float) and "fvd" in where:
            assert x == pytest.approx(y, rel=1e-7), where
        else:
            assert x == y, where

    walk(_numbers(a / "metrics.json"), _numbers(b / "metrics.json"), "")
    for npz in sorted((a / "features").glob("*.npz")):
        with np.load(npz) as x, np.load(b / "features" / npz.name) as y:
            assert set(x.files) == set(y.files)
            for key in x.files:
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{npz.name}:{key}")


@pytest.fixture(scope="module")
def single_run(assets, tmp_path_factory):
    """The reference: one process, from scratch, in one go."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("single") / "eval"
    try:
        assert evaluation.main(_args(assets, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_cli_end_to_end_resume_and_model_card(assets, single_run, tmp_path, monkeypatch, one_thread, capsys):
    calls = []
    original = evaluation.run.evaluate_clip
    monkeypatch.setattr(evaluation.run, "evaluate_clip", lambda *a, **k: calls.append(a[2]) or original(*a, **k))

    out = tmp_path / "eval"
    # a run stopped after 2 clips (as if killed), then resumed
    assert evaluation.main(_args(assets, out, "--max_videos", "2")) == 0
    assert calls == [0, 1] and not (out / "metrics.json").exists()
    assert len((out / "per_video.jsonl").read_text().splitlines()) == 2
    with open(out / "per_video.jsonl", "a") as f:
        f.write('{"clip": 2, "torn')  # a line cut by the kill
    assert evaluation.main(_args(assets, out, "--update_model_card")) == 0
    assert calls == [0, 1, 2, 3]  # nothing recomputed
    lines = [json.loads(line) for line in (out / "per_video.jsonl").read_text().splitlines()]
    assert [r["clip"] for r in lines] == [0, 1, 2, 3] and [r["dataset_row"] for r in lines] == [0, 1, 1, 2]
    assert len(lines[0]["extdm"]["psnr"]) == 3 and isinstance(lines[0]["copy_last_frame"]["ssim"], float)

    result = json.loads((out / "metrics.json").read_text())
    assert result["metadata"]["protocol"]["pred_frames"] == 5 and result["metadata"]["num_samples"] == 3
    assert result["metadata"]["dataset_rows"] == [0, 1, 1, 2]
    ext = result["extdm"]
    for metric in ("psnr", "ssim", "lpips"):
        assert len(ext[metric]["best_of_n"]["per_frame"]) == 5
        assert set(ext[metric]["best_of_n"]) >= {"mean", "std", "ci95", "per_frame"}
    assert ext["psnr"]["best_of_n"]["mean"] >= ext["psnr"]["mean_of_samples"]["mean"]
    assert ext["lpips"]["best_of_n"]["mean"] <= ext["lpips"]["mean_of_samples"]["mean"]
    assert len(ext["fvd_traj"]["values"]) == 3 and np.isfinite(ext["fvd_best"])
    assert {"psnr", "ssim", "lpips", "fvd"} <= set(result["copy_last_frame"]) and "fvd" in result["autoencoder"]
    assert "oracle" in result["notes"]["best_of_n"] and result["paper_results"] == {"fvd": 102.8}
    assert (out / "gifs" / "clip_00000.gif").exists() and not (out / "gifs" / "clip_00001.gif").exists()
    # what a team shares is readable by the team: the umask's mode, not mkstemp's 0600
    umask = os.umask(0)
    os.umask(umask)
    for path in (out / "metrics.json", out / "per_frame.png", out / "per_video.jsonl", out / "run_config.json",
                 out / "gifs" / "clip_00000.gif",
                 out / "features" / "clip_00000.npz", assets / "pipeline" / "README.md", assets / "pipeline" / "per_frame.png"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path

    # the same numbers as the run done in one go
    assert _numbers(out / "metrics.json") == _numbers(single_run / "metrics.json")
    assert (out / "per_video.jsonl").read_text() == (single_run / "per_video.jsonl").read_text()

    card = (assets / "pipeline" / "README.md").read_text()
    assert "model-index" in card and "extdm-evaluation-results-start" in card and "fvd_traj" in card
    # 3 samples: the oracle rows; BAIR 2 -> 5 at 32 px is not the paper's protocol: no paper row, a note why
    assert "| ExtDM, best of 3 (oracle) |" in card and "| paper |" not in card and "are not shown" in card
    assert "- copy last frame: PSNR " in card  # the paired differences
    # the per-frame plot: next to metrics.json, and copied into the pipeline folder the card embeds it from
    assert result["metadata"]["window_frames"] == 3 and result["metadata"]["frame_size"] == 32
    assert Image.open(out / "per_frame.png").format == "PNG"
    assert (assets / "pipeline" / "per_frame.png").read_bytes() == (out / "per_frame.png").read_bytes()
    assert "](per_frame.png)" in card
    paired = result["paired_differences"]["copy_last_frame"]
    assert set(paired) == {"psnr", "ssim", "lpips"} and paired["psnr"]["n"] == 4
    assert paired["psnr"]["verdict"] in ("win", "loss", "not significant")
    per_video = [np.mean(line["extdm"]["psnr"]) - line["copy_last_frame"]["psnr"] for line in lines]
    assert paired["psnr"]["mean"] == pytest.approx(np.mean(per_video), rel=1e-9)
    # updating again replaces the section instead of appending a second one
    evaluation.update_model_card(str(assets / "pipeline"), result)
    assert (assets / "pipeline" / "README.md").read_text().count("extdm-evaluation-results-start") == 1

    # other settings in the same folder are refused, naming the differences
    capsys.readouterr()
    assert evaluation.main(_args(assets, out, "--seed", "3")) == 1
    assert "seed: saved 1000, now 3" in capsys.readouterr().err


def test_offline_without_i3d_says_what_to_pass(assets, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_ASSETS_CACHE", str(tmp_path / "assets"))
    args = [a for a in _args(assets, tmp_path / "out") if a not in ("--i3d", str(assets / "i3d.pt"))]
    assert evaluation.main(args) == 1
    err = capsys.readouterr().err
    assert "--i3d PATH" in err and "--no_fvd" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                 "--master_port"],
    # --multi_gpu starts the processes through torchrun, on a machine without GPUs too (--cpu would start one)
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port"],
}


@pytest.mark.multiprocess
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_give_the_numbers_of_one(assets, single_run, tmp_path, launcher):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    single = single_run
    sharded = tmp_path / "sharded"
    cmd = [*LAUNCHERS[launcher], str(_free_port()), str(ROOT / "training_scripts" / "evaluate.py"), *_args(assets, sharded)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(sharded.glob("per_video.rank*.jsonl"))
    assert (sharded / "per_video.jsonl").read_text() == (single / "per_video.jsonl").read_text()
    _assert_same_numbers(sharded, single)
    assert (sharded / "gifs" / "clip_00000.gif").exists()
    assert json.loads((sharded / "metrics.json").read_text())["metadata"]["processes"] == 2
