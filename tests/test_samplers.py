"""Sampler choice (issue 20): every --scheduler name builds its diffusers class on the ExtDM schedule, the presets
resolve, conflicting or unknown flags are one clear error naming the argument (evaluate and extdm-predict),
metrics.json records the sampler and the denoiser calls per video (equal to the U-Net calls counted), the sample
diversity equals the pairwise MSE of the samples, and the sampler study runs and resumes on a tiny pipeline."""

import importlib.util
import itertools
import json
import logging
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from extdm_diffusers import evaluation
from extdm_diffusers.data import encode_frames, video_features
from extdm_diffusers.models import ExtDMUNet3DModel
from extdm_diffusers.pipelines import ExtDMPipeline
from extdm_diffusers.predict import main as predict_main
from extdm_diffusers.schedulers import (
    SAMPLER_PRESETS,
    SCHEDULER_NAMES,
    ExtDMDDIMScheduler,
    Sampler,
    denoiser_calls_per_video,
    make_scheduler,
    resolve_sampler,
)

from test_predict import TINY_AE, save_tiny_pipeline  # the 32-pixel test pipeline

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"ddim_original": ExtDMDDIMScheduler, "ddim": DDIMScheduler, "ddpm": DDPMScheduler,
           "dpm": DPMSolverMultistepScheduler, "dpm_sde": DPMSolverMultistepScheduler,
           "unipc": UniPCMultistepScheduler, "euler": EulerDiscreteScheduler,
           "euler_ancestral": EulerAncestralDiscreteScheduler}
# a 3-frame window and a 5-frame horizon: two windows per video
BENCHMARK = {"base": "kth", "name": "tiny-samplers", "frame_size": 32, "flow_autoencoder": TINY_AE, "train_cond_frames": 2,
             "train_pred_frames": 3, "evaluation": {"cond_frames": 2, "pred_frames": 5, "num_videos": 2, "num_samples": 3}}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on shared cores
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ names and presets


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_name_builds_its_class_on_the_extdm_schedule(name, tmp_path):
    base = ExtDMDDIMScheduler(prediction_type="v_prediction")
    base.save_pretrained(tmp_path)
    warnings = []  # e.g. config attributes "passed to ..., but not expected": none (diffusers' logger does not propagate)
    handler = logging.Handler(logging.WARNING)
    handler.emit = warnings.append
    logging.getLogger("diffusers").addHandler(handler)
    try:
        scheduler = make_scheduler(name, base.config)
        saved = make_scheduler(name, ExtDMDDIMScheduler.load_config(tmp_path))
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert [w.getMessage() for w in warnings] == []
    assert dict(saved.config) == dict(scheduler.config)
    assert type(scheduler) is CLASSES[name]
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.num_train_timesteps == 1000
    # the original's own betas (diffusers' squaredcos_cap_v2 clips the last at 0.999, the original at 0.9999)
    assert torch.equal(scheduler.betas, base.betas)
    torch.testing.assert_close(scheduler.alphas_cumprod.float(), base.alphas_cumprod, rtol=5e-4, atol=1e-6)  # (DDIM: float64)
    if name != "ddim_original":
        assert scheduler.config.timestep_spacing == "trailing"
        for steps in (2, 5, 10):  # every solver's first call is at pure noise, t = 999
            scheduler.set_timesteps(steps)
            assert int(scheduler.timesteps[0]) == 999 and len(scheduler.timesteps) == steps
    if name in ("dpm", "dpm_sde"):
        assert scheduler.config.solver_order == 2 and scheduler.config.algorithm_type == {
            "dpm": "dpmsolver++", "dpm_sde": "sde-dpmsolver++"}[name]
        assert scheduler.config.use_karras_sigmas is False and scheduler.config.thresholding is True
    if name == "unipc":
        assert scheduler.config.solver_order == 2


def test_presets_resolve_and_conflicts_name_both_flags():
    assert set(SAMPLER_PRESETS) == {"protocol", "fast"}
    assert resolve_sampler() == Sampler("ddim_original", 10, 1.0, None)
    assert resolve_sampler(preset="protocol", protocol_steps=10, protocol_eta=1.0) == Sampler("ddim_original", 10, 1.0, "protocol")
    fast = resolve_sampler(preset="fast")
    assert fast == Sampler("dpm_sde", 8, None, "fast") and not fast.is_paper(10, 1.0)
    assert resolve_sampler(preset="protocol").is_paper(10, 1.0)
    assert not resolve_sampler(num_inference_steps=5).is_paper(10, 1.0)
    assert resolve_sampler("ddim", eta=0) == Sampler("ddim", 10, 0.0, None)
    assert fast.settings() == {"class": "DPMSolverMultistepScheduler", "schedule": "the original's cosine betas (trained_betas)",
                               "timestep_spacing": "trailing", "solver_order": 2, "lower_order_final": True,
                               "algorithm_type": "sde-dpmsolver++", "eta": None}
    json.dumps(fast.settings())
    with pytest.raises(ValueError, match=r"^--sampler_preset fast sets the scheduler, steps and eta; it cannot be "
                                         r"combined with --scheduler, --eta \(pass the preset or the flags\)$"):
        resolve_sampler("ddim", eta=0.5, preset="fast")
    with pytest.raises(ValueError, match=r"^--sampler_preset: unknown preset 'slow'; choose one of protocol, fast$"):
        resolve_sampler(preset="slow")
    with pytest.raises(ValueError, match=r"^--scheduler: unknown scheduler 'heun'; choose one of ddim_original, ddim,"):
        resolve_sampler("heun")
    with pytest.raises(ValueError, match=r"^--eta: scheduler dpm takes no eta \(only ddim_original, ddim do\)$"):
        resolve_sampler("dpm", eta=1.0)
    with pytest.raises(ValueError, match=r"^--num_inference_steps must be an integer >= 1, got 0$"):
        resolve_sampler(num_inference_steps=0)


def test_evaluate_and_predict_refuse_unknown_or_conflicting_sampler_flags(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluation.parse_args(["--pipeline", "p", "--dataset_dir", "d", "--scheduler", "heun"])
    assert exit_info.value.code == 2 and "argument --scheduler: invalid choice: 'heun'" in capsys.readouterr().err
    config = evaluation.EvaluationConfig(pipeline="p", benchmark="kth", dataset_dir="d", scheduler="heun")
    with pytest.raises(evaluation.EvaluationError, match="^--scheduler: unknown scheduler 'heun'"):
        config.check()
    argv = ["--pipeline", "p", "--benchmark", "kth", "--dataset_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"),
            "--sampler_preset", "fast", "--num_inference_steps", "3"]
    assert evaluation.main(argv) == 1
    err = capsys.readouterr().err
    assert err == "error: --sampler_preset fast sets the scheduler, steps and eta; it cannot be combined with " \
                  "--num_inference_steps (pass the preset or the flags)\n"
    assert not (tmp_path / "o").exists()

    video = tmp_path / "clip.gif"
    video.write_bytes(b"")  # checked after the sampler flags, never read
    base = ["--pipeline", str(tmp_path / "none"), "--video", str(video), "--output", str(tmp_path / "out.mp4")]
    for extra, message in ((["--scheduler", "heun"], "argument --scheduler: invalid choice: 'heun'"),
                           (["--sampler_preset", "fast", "--eta", "0"], "--sampler_preset fast sets the scheduler, "
                            "steps and eta; it cannot be combined with --eta"),
                           (["--scheduler", "unipc", "--eta", "0"], "--eta: scheduler unipc takes no eta")):
        with pytest.raises(SystemExit) as exit_info:
            predict_main(base + extra)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("extdm-predict: error: ") and message in err
        assert err.count("\n") == 1


# ------------------------------------------------------------------------------------------ a tiny evaluation


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("samplers")
    save_tiny_pipeline(root / "pipeline", BENCHMARK)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(2):
        frames = np.repeat(rng.integers(0, 60, (1, 32, 32, 3), dtype=np.uint8), 7, axis=0)
        for t in range(7):
            frames[t, 6 + i : 16 + i, 4 + t : 14 + t] = 220
        rows.append({"video": encode_frames(frames), "num_frames": 7, "id": f"v{i}"})
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows, features=video_features())}).save_to_disk(str(root / "data"))
    return root


def _evaluate_args(assets, out, *extra):
    return ["--pipeline", str(assets / "pipeline"), "--dataset_dir", str(assets / "data"), "--output_dir", str(out),
            "--no_fvd", "--no_lpips", "--no_baselines", "--num_gifs", "0", "--batch_size", "2", "--device", "cpu", *extra]


def test_metrics_record_the_sampler_and_the_counted_denoiser_calls(assets, tmp_path, monkeypatch, capsys):
    calls, samples = [], {}
    unet_forward = ExtDMUNet3DModel.forward
    pipe_call = ExtDMPipeline.__call__

    def counted_forward(self, sample, *args, **kwargs):
        calls.append(sample.shape[0])  # one U-Net call per sample in the batch
        return unet_forward(self, sample, *args, **kwargs)

    def kept_call(self, video, *args, **kwargs):
        output = pipe_call(self, video, *args, **kwargs)
        samples.setdefault(float(video.sum()), []).append(output.frames.float().clamp(0, 1))
        return output

    monkeypatch.setattr(ExtDMUNet3DModel, "forward", counted_forward)
    monkeypatch.setattr(ExtDMPipeline, "__call__", kept_call)
    out = tmp_path / "fast"
    assert evaluation.main(_evaluate_args(assets, out, "--sampler_preset", "fast")) == 0
    printed = capsys.readouterr().out
    assert "sampler: not the paper's sampler: dpm_sde, 8 steps per window (--sampler_preset fast) (the paper: " \
           "ddim_original, 10 steps per window, eta 1); these numbers are not the paper's protocol" in printed
    result = json.loads((out / "metrics.json").read_text())
    proto = result["metadata"]["protocol"]
    assert (proto["scheduler"], proto["sampler_preset"], proto["paper_sampler"], proto["num_inference_steps"]) == \
        ("dpm_sde", "fast", False, 8)
    assert proto["scheduler_settings"]["class"] == "DPMSolverMultistepScheduler"
    assert proto["scheduler_settings"]["algorithm_type"] == "sde-dpmsolver++" and proto["scheduler_settings"]["eta"] is None
    # 8 steps x 2 windows; every sample of every video made exactly that many U-Net calls
    assert proto["denoiser_calls_per_video"] == 16
    assert sum(calls) == proto["denoiser_calls_per_video"] * 2 * 3
    assert "not the paper's protocol" in result["notes"]["sampler"]

    # the diversity: the mean over pairs of one video's samples of their per-pixel MSE
    assert len(samples) == 2
    expected = []
    for batches in samples.values():
        frames = torch.cat(batches).double()
        pairs = [float((frames[i] - frames[j]).square().mean()) for i, j in itertools.combinations(range(len(frames)), 2)]
        expected.append(np.mean(pairs))
    diversity = result["extdm"]["sample_diversity"]
    assert diversity["n"] == 2 and diversity["mean"] > 0
    assert diversity["mean"] == pytest.approx(np.mean(expected), rel=1e-9)

    # the paper's sampler, by default: recorded as such, with its own count
    calls.clear()
    paper = tmp_path / "paper"
    assert evaluation.main(_evaluate_args(assets, paper, "--num_videos", "1", "--num_samples", "1")) == 0
    assert "sampler: the paper's sampler: ddim_original, 10 steps per window, eta 1" in capsys.readouterr().out
    proto = json.loads((paper / "metrics.json").read_text())["metadata"]["protocol"]
    assert (proto["scheduler"], proto["sampler_preset"], proto["paper_sampler"]) == ("ddim_original", None, True)
    assert proto["denoiser_calls_per_video"] == sum(calls) == 20
    # another sampler in the same folder is refused, naming the difference
    assert evaluation.main(_evaluate_args(assets, paper, "--num_videos", "1", "--num_samples", "1", "--scheduler", "unipc")) == 1
    assert "scheduler: saved 'ddim_original', now 'unipc'" in capsys.readouterr().err


def test_autocast_runs_the_pipeline_in_bfloat16_and_is_recorded(assets, tmp_path):
    runs = {}
    for name, extra in (("float32", []), ("autocast", ["--autocast", "bfloat16"])):
        out = tmp_path / name
        assert evaluation.main(_evaluate_args(assets, out, "--num_videos", "1", "--num_samples", "1",
                                              "--num_inference_steps", "2", *extra)) == 0
        runs[name] = json.loads((out / "metrics.json").read_text())
    assert runs["autocast"]["metadata"]["autocast"] == "bfloat16" and runs["float32"]["metadata"]["autocast"] is None
    psnr = [runs[name]["extdm"]["psnr"]["mean_of_samples"]["mean"] for name in ("float32", "autocast")]
    assert psnr[0] != psnr[1] and psnr[1] == pytest.approx(psnr[0], abs=0.05)  # bf16 arithmetic, the same prediction


def test_calls_count_every_window_and_multistep_timesteps():
    config = ExtDMDDIMScheduler().config
    assert denoiser_calls_per_video("ddim_original", config, 10, 40, 5) == 80
    assert denoiser_calls_per_video("dpm", config, 4, 28, 10) == 12  # 3 windows, the last one partly used
    assert denoiser_calls_per_video("euler", config, 3, 5, 5) == 3


# ------------------------------------------------------------------------------------------ the study


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_samplers", ROOT / "benchmarks" / "bench_samplers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_samplers_pairs_two_settings_and_resumes(assets, tmp_path, monkeypatch, capsys):
    bench = _bench_module()
    output = tmp_path / "results.json"
    argv = ["--pipeline", str(assets / "pipeline"), "--dataset_dir", str(assets / "data"), "--num_videos", "2",
            "--num_samples", "2", "--schedulers", "dpm", "--steps", "2", "--output", str(output), "--plot",
            str(tmp_path / "samplers.png"), "--device", "cpu", "--batch_size", "2"]
    results = bench.main(argv)
    assert set(results["settings"]) == {"ddim_original-10", "dpm-2"}
    reference, dpm = results["settings"]["ddim_original-10"], results["settings"]["dpm-2"]
    assert (reference["denoiser_calls_per_video"], dpm["denoiser_calls_per_video"]) == (20, 4)
    for metric in ("psnr", "ssim"):
        for kind in ("mean_of_samples", "best_of_n"):
            paired = reference[metric][kind]["paired_vs_reference"]
            assert paired["mean"] == 0 and paired["verdict"] == "not significant"  # the reference against itself
            paired = dpm[metric][kind]["paired_vs_reference"]
            assert paired["n"] == 2 and paired["mean"] == pytest.approx(dpm[metric][kind]["mean"] - reference[metric][kind]["mean"])
    assert reference["sample_diversity"]["ratio_to_reference"] == 1 and reference["holds"] is True
    assert dpm["seconds_per_video"] > 0 and dpm["videos_timed"] == 2
    assert {"model", "avx512f", "amx_bf16", "native_bf16"} <= set(results["metadata"]["cpu"]) and json.loads(output.read_text()) == results
    assert (tmp_path / "samplers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a rerun skips the finished settings: nothing evaluated again, the same results
    monkeypatch.setattr(bench, "run_setting", lambda *a: pytest.fail("a finished setting was evaluated again"))
    assert bench.main(argv) == results

    # DDIM's eta as a grid dimension: one setting per eta for the schedulers that take one, the others once; the
    # recorded reference is reused, each run records its eta
    monkeypatch.undo()
    results = bench.main(argv[:argv.index("--schedulers")] + ["--schedulers", "ddim", "dpm", "--steps", "2", "--etas",
                                                              "0", "0.5"] + argv[argv.index("--output"):])
    assert set(results["settings"]) == {"ddim_original-10", "dpm-2", "ddim-2-eta0", "ddim-2-eta0.5"}
    for eta in (0, 0.5):
        row = results["settings"][f"ddim-2-eta{eta:g}"]
        assert row["eta"] == eta and row["denoiser_calls_per_video"] == 4
        recorded = json.loads((tmp_path / "results_runs" / f"ddim-2-eta{eta:g}" / "metrics.json").read_text())
        assert recorded["metadata"]["protocol"]["eta"] == eta
    deterministic, noisy = (results["settings"][f"ddim-2-eta{eta:g}"]["sample_diversity"]["mean"] for eta in (0, 0.5))
    assert deterministic != noisy
    with pytest.raises(SystemExit):
        bench.parse_args(argv + ["--etas", "-1"])
    assert "error: --etas -1: --eta must be >= 0 (0: deterministic DDIM, 1: the original's sampling), got -1.0" \
        in capsys.readouterr().err

    # the same output with another seed (e.g. the protocol's, when --seed is left out) is refused: its settings
    # could not be paired with the recorded reference's samples
    with pytest.raises(evaluation.EvaluationError, match=r"holds an evaluation run with different settings; .*"
                                                         r"seed: saved \d+, now 7"):
        bench.main(argv + ["--seed", "7"])


@pytest.mark.parametrize("steps", [2, 3, 4, 5, 6, 8, 10])
def test_ddim_at_eta_1_from_pure_noise_stays_finite(steps):
    """From t = 999 (abar 2e-10) at eta 1, DDIM's direction coefficient sqrt(1 - abar_prev - sigma^2) is ~2e-9
    exactly; float32 alphas rounded it below zero at 5 steps (NaN in every sample). The sample keeps its dtype."""
    from extdm_diffusers import ExtDMDDIMScheduler

    scheduler = make_scheduler("ddim", ExtDMDDIMScheduler(prediction_type="v_prediction").config)
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    sample, model_output = torch.randn(8, 3, 5, 16, 16, generator=g), torch.randn(8, 3, 5, 16, 16, generator=g)
    for t in scheduler.timesteps:
        sample = scheduler.step(model_output, t, sample, eta=1.0, generator=g).prev_sample
        assert sample.dtype == torch.float32 and torch.isfinite(sample).all(), f"step from t={int(t)}"


def test_bench_cpu_bf16_times_three_ways_on_the_same_videos(assets, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_cpu_bf16", ROOT / "benchmarks" / "bench_cpu_bf16.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    output = tmp_path / "bf16.json"
    results = bench.main(["--pipeline", str(assets / "pipeline"), "--dataset_dir", str(assets / "data"), "--num_videos", "2",
                          "--repeats", "1", "--num_inference_steps", "2", "--output", str(output)])
    assert json.loads(output.read_text()) == results and results["num_videos"] == 2
    assert set(results["ways"]) == {"float32", "bfloat16", "autocast"}
    assert results["ways"]["float32"]["speed_vs_float32"] == 1 and results["ways"]["float32"]["psnr_vs_float32_prediction"] is None
    for way in ("bfloat16", "autocast"):  # the same noise: close to float32's frames, not equal to them
        assert 25 < results["ways"][way]["psnr_vs_float32_prediction"] < 100
        assert results["ways"][way]["seconds_per_video"] > 0
    assert {"model", "onednn_bf16", "native_bf16"} <= set(results["cpu"])
