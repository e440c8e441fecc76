"""The training scripts (extdm_diffusers.training.train_flow_ae / train_dm) on a tiny 32-pixel dataset with
tiny models: a few steps each, the saved folders load, kill-and-resume is bit-identical, bad inputs fail first."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

TINY_AE = {
    "num_regions": 2, "sample_size": 32,
    "region_predictor_params": {"block_expansion": 4, "max_features": 16, "num_blocks": 2},
    "bg_predictor_params": {"block_expansion": 4, "max_features": 16, "num_blocks": 2},
    "generator_params": {"block_expansion": 4, "max_features": 16, "num_bottleneck_blocks": 1,
                         "pixelwise_flow_predictor_params": {"block_expansion": 4, "max_features": 16, "num_blocks": 2}},
}
TINY_UNET = {"num_cond_frames": 2, "num_pred_frames": 2, "base_channels": 8, "channel_mults": [1, 2],
             "attention_heads": 2, "attention_head_dim": 8}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on shared cores: threads only add contention
    yield
    torch.set_num_threads(threads)


def write_tiny_dataset(path, size=32, num_train=6, num_test=2, num_frames=12, seed=0):
    import datasets

    from extdm_diffusers.data.video_schema import encode_frames, video_features

    rng = np.random.default_rng(seed)

    def video(i):
        frames = np.zeros((num_frames, size, size, 1), np.uint8)
        x, y, dx, dy = (int(v) for v in rng.integers(0, size - 8, 4))
        for t in range(num_frames):  # a bouncing-ish white square
            frames[t, y:y + 8, x:x + 8] = 255
            x, y = (x + 1 + dx % 3) % (size - 8), (y + 1 + dy % 3) % (size - 8)
        return {"video": encode_frames(frames), "num_frames": num_frames, "id": f"v{i}"}

    datasets.DatasetDict({
        split: datasets.Dataset.from_list([video(i) for i in range(n)], features=video_features())
        for split, n in (("train", num_train), ("test", num_test))
    }).save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    data = write_tiny_dataset(root / "data")
    from extdm_diffusers.benchmarks import get_benchmark
    from extdm_diffusers.models import FlowAutoencoder

    torch.manual_seed(0)
    FlowAutoencoder(**get_benchmark("smmnist").flow_autoencoder_config(**TINY_AE)).save_pretrained(root / "ae")
    return {"root": root, "data": data, "ae": str(root / "ae")}


def ae_argv(workspace, out, *extra):
    return ["--benchmark", "smmnist", "--dataset_dir", workspace["data"], "--output_dir", str(out),
            "--model_config", json.dumps(TINY_AE), "--train_batch_size", "2", "--perceptual_loss", "none",
            "--num_validation_videos", "1", "--logging_steps", "1", *extra]


def dm_argv(workspace, out, *extra, flow_autoencoder=None):
    return ["--benchmark", "smmnist", "--dataset_dir", workspace["data"], "--output_dir", str(out),
            "--flow_autoencoder", flow_autoencoder or workspace["ae"], "--model_config", json.dumps(TINY_UNET),
            "--train_batch_size", "2", "--num_validation_videos", "1", "--validation_inference_steps", "2",
            "--logging_steps", "1", *extra]


def unet_state(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder, "unet", "diffusion_pytorch_model.safetensors")))


def test_flow_ae_trains_saves_and_feeds_the_denoiser(workspace, monkeypatch):
    from extdm_diffusers.models import FlowAutoencoder
    from extdm_diffusers.pipelines import ExtDMPipeline
    from extdm_diffusers.training import loop, train_dm, train_flow_ae

    reuse_calls = []  # the shared loop keeps freed CPU memory for reuse (extdm_diffusers.cpu_memory)
    monkeypatch.setattr(loop, "reuse_freed_cpu_memory", lambda: reuse_calls.append(1))

    out = workspace["root"] / "ae-run"
    result = train_flow_ae.main(ae_argv(workspace, out, "--max_train_steps", "2", "--checkpointing_steps", "2"))
    assert result["global_step"] == 2 and np.isfinite(result["loss"])
    autoencoder = FlowAutoencoder.from_pretrained(out)  # saved at the output folder's root
    assert autoencoder.config.num_regions == 2
    assert (out / "README.md").read_text().count("library_name: diffusers") == 1
    assert (out / "validation" / "step-2" / "pair_0.gif").is_file()
    assert (out / "checkpoint-2" / "CHECKPOINT_COMPLETE").is_file()

    # the denoiser trains on it, and the saved pipeline loads and predicts
    dm_out = workspace["root"] / "dm-run"
    result = train_dm.main(dm_argv(workspace, dm_out, "--max_train_steps", "2", "--log_reconstruction_steps", "1",
                                   flow_autoencoder=str(out)))
    assert result["global_step"] == 2 and "val_psnr" in result
    logged = [json.loads(line) for line in (dm_out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "rec_loss", "rec_warp_loss"} <= set(logged[0])
    pipe = ExtDMPipeline.from_pretrained(dm_out)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(torch.rand(1, 2, 3, 32, 32), num_frames=3, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0), output_type="pt").frames
    assert frames.shape == (1, 3, 3, 32, 32)
    card = (dm_out / "README.md").read_text()
    assert "video-prediction" in card and "ExtDMPipeline.from_pretrained" in card
    assert (dm_out / "validation" / "step-2" / "video_0.gif").is_file()
    # a pipeline folder is accepted as --flow_autoencoder too
    assert train_dm.load_flow_autoencoder(str(dm_out)).config.num_regions == 2
    assert reuse_calls == [1, 1]


def test_dm_v_prediction_with_min_snr_is_saved_in_the_pipeline(workspace):
    from extdm_diffusers.pipelines import ExtDMPipeline
    from extdm_diffusers.training import train_dm

    losses = {}
    for name, extra in (("epsilon", []), ("v", ["--prediction_type", "v_prediction", "--snr_gamma", "5"])):
        out = workspace["root"] / f"dm-{name}"
        train_dm.main(dm_argv(workspace, out, "--max_train_steps", "1", "--seed", "3", *extra))
        losses[name] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]
        scheduler = ExtDMPipeline.from_pretrained(out).scheduler
        assert scheduler.config.prediction_type == ("epsilon" if name == "epsilon" else "v_prediction")
    # same seed, data, noise and initial weights: only the target and the weighting differ
    assert np.isfinite(losses["v"]) and losses["v"] != losses["epsilon"]


def test_dm_resume_is_bit_identical(workspace):
    from extdm_diffusers.training import train_dm

    # 6 videos / batch 2 = 3 batches per epoch: the 4 steps cross an epoch boundary, the checkpoint sits mid-epoch
    # a diffusers LR schedule with warm-up: its state must come back with the checkpoint too
    extra = ("--max_train_steps", "4", "--checkpointing_steps", "2", "--validation_steps", "100", "--use_ema",
             "--log_reconstruction_steps", "0", "--learning_rate", "1e-3", "--lr_scheduler", "cosine", "--lr_warmup_steps", "1")
    full = workspace["root"] / "dm-full"
    train_dm.main(dm_argv(workspace, full, *extra))
    resumed = workspace["root"] / "dm-resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")  # as if killed after checkpoint-2
    result = train_dm.main(dm_argv(workspace, resumed, *extra, "--resume_from_checkpoint", "latest"))
    assert result["global_step"] == 4
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 3  # it did resume: steps 1-2 came from the checkpoint
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    expected = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=4)
    lrs = []
    for _ in range(4):
        optimizer.step()
        expected.step()
        lrs.append(expected.get_last_lr()[0])
    records = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    logged = [r["lr"] for r in records if "lr" in r]
    assert logged == pytest.approx(lrs[2:])  # the schedule continued where the checkpoint left it
    a, b = unet_state(full), unet_state(resumed)  # the EMA weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from safetensors.torch import load_file

    raw_a = load_file(str(full / "checkpoint-4" / "model.safetensors"))
    raw_b = load_file(str(resumed / "checkpoint-4" / "model.safetensors"))
    assert all(torch.equal(raw_a[k], raw_b[k]) for k in raw_a)  # the trained (non-EMA) weights
    groups = torch.load(resumed / "checkpoint-4" / "optimizer.bin", weights_only=True)["param_groups"]
    assert [g["fused"] for g in groups] == [True]  # the fused AdamW, resumed bit-identically


def test_flow_ae_resume_is_bit_identical(workspace):
    from safetensors.torch import load_file

    from extdm_diffusers.training import train_flow_ae

    extra = ("--max_train_steps", "3", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2", "--validation_steps", "100")
    full = workspace["root"] / "ae-full"
    train_flow_ae.main(ae_argv(workspace, full, *extra))
    assert sorted(p.name for p in full.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]  # pruned to 2
    resumed = workspace["root"] / "ae-resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    train_flow_ae.main(ae_argv(workspace, resumed, *extra, "--resume_from_checkpoint", "latest"))
    assert json.loads((resumed / "metrics.jsonl").read_text().splitlines()[0])["step"] == 3
    a = load_file(str(full / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    groups = torch.load(resumed / "checkpoint-3" / "optimizer.bin", weights_only=True)["param_groups"]
    assert [g["fused"] for g in groups] == [True]  # the fused Adam


def test_dm_resume_with_gradient_accumulation_is_bit_identical(workspace):
    """accelerator.accumulate: 2 micro-batches per step (8 in all, crossing epoch boundaries), killed after step 2."""
    from extdm_diffusers.training import train_dm

    extra = ("--max_train_steps", "4", "--checkpointing_steps", "2", "--validation_steps", "100",
             "--gradient_accumulation_steps", "2", "--train_batch_size", "1", "--log_reconstruction_steps", "0")
    full = workspace["root"] / "dm-accumulate-full"
    train_dm.main(dm_argv(workspace, full, *extra))
    resumed = workspace["root"] / "dm-accumulate-resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    train_dm.main(dm_argv(workspace, resumed, *extra, "--resume_from_checkpoint", "latest"))
    a, b = unet_state(full), unet_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    logged = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in logged if r["step"] > 2 and "loss" in r] == [r["loss"] for r in again if "loss" in r]


def test_seed_defaults_to_the_registry_and_gradient_checkpointing_trains_both(workspace, tmp_path):
    from safetensors.torch import load_file

    from extdm_diffusers.benchmarks import get_benchmark
    from extdm_diffusers.training import train_dm, train_flow_ae

    seed = get_benchmark("smmnist").autoencoder_training.seed
    assert seed == get_benchmark("smmnist").denoiser_training.seed
    for name, extra in (("default", ()), ("explicit", ("--seed", str(seed)))):
        train_flow_ae.main(ae_argv(workspace, tmp_path / name, "--max_train_steps", "1", *extra))
    a = load_file(str(tmp_path / "default" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "explicit" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # gradient checkpointing recomputes activations but trains the same weights and batch-norm statistics
    train_flow_ae.main(ae_argv(workspace, tmp_path / "checkpointed", "--max_train_steps", "1", "--gradient_checkpointing"))
    c = load_file(str(tmp_path / "checkpointed" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == c.keys()
    for k in a:
        torch.testing.assert_close(c[k], a[k], msg=k)
    result = train_dm.main(dm_argv(workspace, tmp_path / "dm", "--max_train_steps", "1", "--gradient_checkpointing"))
    assert result["global_step"] == 1 and np.isfinite(result["loss"])


def test_bf16_mixed_precision_trains_both_on_the_cpu_and_keeps_fp32_weights(workspace, tmp_path):
    """--mixed_precision bf16 (the quick start's --mixed_precision): accelerate's CPU autocast runs the forward passes
    in bf16, the frozen autoencoder is cast to bf16, the trained weights and their saved files stay fp32."""
    from safetensors.torch import load_file

    from extdm_diffusers.training import train_dm, train_flow_ae

    losses = {}
    for precision in ("no", "bf16"):
        ae = train_flow_ae.main(ae_argv(workspace, tmp_path / f"ae-{precision}", "--max_train_steps", "1",
                                        "--mixed_precision", precision))
        dm = train_dm.main(dm_argv(workspace, tmp_path / f"dm-{precision}", "--max_train_steps", "1", "--seed", "3",
                                   "--mixed_precision", precision))
        losses[precision] = (ae["loss"], dm["loss"])
        weights = load_file(str(tmp_path / f"ae-{precision}" / "diffusion_pytorch_model.safetensors"))
        weights.update(unet_state(tmp_path / f"dm-{precision}"))
        assert {w.dtype for w in weights.values() if w.is_floating_point()} == {torch.float32}
    for fp32, bf16 in zip(losses["no"], losses["bf16"]):
        assert np.isfinite(bf16) and bf16 != fp32  # the same seed and data: only the arithmetic's precision differs
        assert bf16 == pytest.approx(fp32, rel=0.05)


@pytest.mark.parametrize("script, extra, message", [
    ("dm", ["--benchmark", "nope"], "--benchmark"),
    ("ae", ["--benchmark", "nope"], "--benchmark"),
    ("dm", ["--model_config", '{"base_channels": 8, "colour": 1}'], "colour"),
    ("ae", ["--model_config", '{"generator_params": {"block_expansion": 4, "bogus": 1}}'], "generator_params.bogus"),
    ("dm", ["--model_config", json.dumps(dict(TINY_UNET, num_cond_frames=10, num_pred_frames=5))], "fewer than the 15 frames"),
    ("ae", ["--model_config", json.dumps(dict(TINY_AE, sample_size=64))], "64x64"),
    ("dm", ["--flow_autoencoder", "/nonexistent/ae"], "--flow_autoencoder"),
    ("dm", ["--lr_warmup_steps", "5"], "--lr_warmup_steps: --lr_scheduler multistep has no warm-up"),
    ("ae", ["--lr_scheduler", "cosine", "--lr_warmup_steps", "-1"], "--lr_warmup_steps must be >= 0"),
    ("dm", ["--snr_gamma", "0"], "--snr_gamma must be > 0"),
])
def test_bad_inputs_fail_before_training(workspace, tmp_path, script, extra, message):
    from extdm_diffusers.training import TrainingArgumentError, train_dm, train_flow_ae

    out = tmp_path / "out"
    argv = dm_argv(workspace, out) if script == "dm" else ae_argv(workspace, out)
    with pytest.raises(TrainingArgumentError, match=message.replace("(", r"\(")):
        (train_dm if script == "dm" else train_flow_ae).main(argv + ["--max_train_steps", "1"] + extra)
    assert not (out / "metrics.jsonl").exists()


def test_report_to_tensorboard_without_tensorboard(workspace, tmp_path):
    import importlib.util

    from extdm_diffusers.training import TrainingArgumentError, train_dm

    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed")
    with pytest.raises(TrainingArgumentError, match="pip install tensorboard"):
        train_dm.main(dm_argv(workspace, tmp_path / "out", "--report_to", "tensorboard"))


def test_partial_checkpoint_is_named_not_loaded(workspace, tmp_path):
    from extdm_diffusers.training import TrainingArgumentError, train_dm

    out = tmp_path / "out"
    (out / "checkpoint-3").mkdir(parents=True)
    (out / "checkpoint-3" / "model.safetensors").write_bytes(b"half")
    with pytest.raises(TrainingArgumentError, match="checkpoint-3 is incomplete"):
        train_dm.main(dm_argv(workspace, out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))


def test_vgg_download_failure_says_what_to_do(workspace, tmp_path, monkeypatch):
    from extdm_diffusers.training import TrainingArgumentError, flow_autoencoder_losses, train_flow_ae

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(flow_autoencoder_losses.VGG19PerceptualFeatures, "__init__", offline)
    argv = [a for a in ae_argv(workspace, tmp_path / "out", "--max_train_steps", "1") if a != "none"]
    argv[argv.index("--perceptual_loss")] = "--perceptual_loss=vgg19"
    with pytest.raises(TrainingArgumentError, match="--perceptual_weights PATH.*--perceptual_loss none"):
        train_flow_ae.main(argv)


@pytest.mark.multiprocess
def test_two_process_runs(workspace, tmp_path):
    """2 CPU processes (torchrun + gloo through accelerate) for 2 steps of each script (~30-60 s)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    for name, argv in (("train_flow_ae", ae_argv(workspace, tmp_path / "ae")),
                       ("train_dm", dm_argv(workspace, tmp_path / "dm"))):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   str(REPO / "training_scripts" / f"{name}.py"), *argv, "--max_train_steps", "2", "--checkpointing_steps", "2"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "x 2 processes" in done.stderr
        assert (tmp_path / name.replace("train_flow_ae", "ae").replace("train_dm", "dm") / "checkpoint-2" / "CHECKPOINT_COMPLETE").is_file()
    assert (tmp_path / "dm" / "model_index.json").is_file()
    assert (tmp_path / "ae" / "config.json").is_file()
