"""The docs' Python examples run as written."""

import logging
import re
import types
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

DOCS = Path(__file__).parent.parent / "docs"


def python_blocks(name):
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), re.S)


def test_models_md_examples_run():
    for block in python_blocks("models.md")[:1]:  # the second needs original checkpoints
        exec(compile(block, "docs/models.md", "exec"), {})


def test_pipeline_md_prediction_example_runs(reference_pipeline_factory, tmp_path, monkeypatch):
    _, _, pipe = reference_pipeline_factory("pipeline_traj_ada")
    monkeypatch.chdir(tmp_path)
    pipe.save_pretrained("extdm-kth")
    iio.imwrite("clip.mp4", np.random.default_rng(0).integers(0, 255, (6, 48, 48, 3), dtype=np.uint8), fps=10)
    scope = {}
    exec(compile(python_blocks("pipeline.md")[1], "docs/pipeline.md", "exec"), scope)
    assert scope["out"].frames.shape == (1, 40, 32, 32, 3)
    assert iio.imread("prediction.mp4").shape[0] == 40  # (the container reports no frame count)


def test_pipeline_md_extrapolation_example_runs(capsys):
    block = next(b for b in python_blocks("pipeline.md") if "autoencoder.extrapolate" in b)
    scope = {}
    exec(compile(block, "docs/pipeline.md", "exec"), scope)
    assert capsys.readouterr().out.strip() == "(1, 5, 2, 32, 32) (1, 5, 3, 64, 64)"
    assert scope["continued"].min() >= 0 and scope["continued"].max() <= 1


def test_pipeline_md_speed_example_runs(reference_pipeline_factory):
    """Each line of the attention-chunking example reaches every attention layer and keeps the frames."""
    from extdm_diffusers.models.space_time_window_attention import SpaceTimeWindowAttention
    from extdm_diffusers.models.temporal_attention import TemporalAttention

    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")
    block = next(b for b in python_blocks("pipeline.md") if "set_attention_chunking" in b)
    layers = [m for m in pipe.unet.modules() if isinstance(m, (SpaceTimeWindowAttention, TemporalAttention))]
    video, noise = t["inputs.video"].permute(0, 2, 1, 3, 4), t["inputs.initial_noise"]
    frames = {}
    for line, expected in zip(block.strip().splitlines(), (16384, None, "auto")):
        exec(compile(line, "docs/pipeline.md", "exec"), {"pipe": pipe})
        assert {layer.chunk_tokens for layer in layers} == {expected}
        frames[expected] = pipe(video, num_inference_steps=3, eta=0.0, latents=noise, output_type="pt").frames
    pipe.unet.set_attention_chunking(40)  # one 32-token window per chunk
    frames[40] = pipe(video, num_inference_steps=3, eta=0.0, latents=noise, output_type="pt").frames
    # Chunks of other sizes run other GEMM kernels, whose rounding depends on the CPU and the thread count; the
    # DDIM steps and the decoder's warp carry it to the frames. Measured at 10 steps, chunks of 40 tokens against one pass:
    # Intel AVX-512, under 1e-5 absolute; AMD EPYC (AVX2 only), 2 to 8 threads, 9.1e-5 absolute (1,825 of 15,360
    # elements over 1e-5, on frames of max 0.87), and bit-equal with 1 thread. The bound: 5x that, relative to
    # the frames' scale.
    scale = float(frames[None].abs().max())
    for chunked in frames.values():
        torch.testing.assert_close(chunked, frames[None], rtol=0, atol=5e-4 * scale)


def test_pipeline_md_prepare_condition_example_runs(reference_pipeline_factory):
    """The once-per-window step as the docs show it gives the noise of a plain call, under inference_mode too."""
    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")
    block = next(b for b in python_blocks("pipeline.md") if "prepare_condition" in b)
    condition = pipe.encode_condition(t["inputs.video"].permute(0, 2, 1, 3, 4))
    scope = {"pipe": pipe, "sample": t["inputs.initial_noise"], "t": torch.tensor(909),
             "cond_motion": condition.cond_motion, "cond_features": condition.cond_features}
    with torch.inference_mode():
        exec(compile(block, "docs/pipeline.md", "exec"), scope)
        expected = pipe.unet(scope["sample"], 909, condition.cond_motion, condition.cond_features).sample
    torch.testing.assert_close(scope["noise"], expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
                                  "EulerDiscreteScheduler"])
def test_pipeline_md_scheduler_swap_prints_no_warning(name, tmp_path):
    """The documented swap, for each scheduler the docs name, fresh and after save/load: no diffusers warning
    (such as config attributes "passed to DDIMScheduler, but not expected"), and the ExtDM schedule kept."""
    from extdm_diffusers import ExtDMDDIMScheduler

    block = next(b for b in python_blocks("pipeline.md") if "from_config(pipe.scheduler.config)" in b)
    assert name in (DOCS / "pipeline.md").read_text()
    ExtDMDDIMScheduler().save_pretrained(tmp_path)
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    diffusers_logger = logging.getLogger("diffusers")
    diffusers_logger.addHandler(handler)
    try:
        for scheduler in (ExtDMDDIMScheduler(), ExtDMDDIMScheduler.from_pretrained(tmp_path)):
            pipe = types.SimpleNamespace(scheduler=scheduler)
            exec(compile(block.replace("DPMSolverMultistepScheduler", name), "docs/pipeline.md", "exec"), {"pipe": pipe})
            assert type(pipe.scheduler).__name__ == name
            assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    finally:
        diffusers_logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == []


def test_evaluation_md_metrics_example_runs(tmp_path, monkeypatch):
    import torch

    class StandInI3D(torch.nn.Module):  # the StyleGAN-V detector's call signature, 400 features
        def forward(self, x: torch.Tensor, rescale: bool, resize: bool, return_features: bool) -> torch.Tensor:
            return x.mean(dim=(2, 3, 4)).repeat(1, 134)[:, :400] + torch.linspace(0, 1, 400)

    monkeypatch.chdir(tmp_path)
    torch.jit.save(torch.jit.script(StandInI3D()), "i3d_torchscript.pt")
    # random weights in the layout of torchvision's AlexNet `features` (the example reads a local file)
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    state = {}
    for i, shape in shapes.items():
        state[f"features.{i}.weight"] = torch.randn(shape) * 0.05
        state[f"features.{i}.bias"] = torch.zeros(shape[0])
    torch.save(state, "alexnet.pth")

    text = (DOCS / "evaluation.md").read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks
    scope = {}
    for block in blocks:
        exec(compile(block, "docs/evaluation.md", "exec"), scope)
    assert scope["psnr"](scope["pred"], scope["target"]).shape == (4, 10)
    assert isinstance(scope["fvd"], float)


def test_benchmarks_md_example_runs():
    scope = {}
    exec(compile(python_blocks("benchmarks.md")[0], "docs/benchmarks.md", "exec"), scope)
    assert scope["pipe"].num_cond_frames == 10 and scope["config"]["base_channels"] == 32


def test_pipeline_md_rollout_reference_example_runs():
    block = next(b for b in python_blocks("pipeline.md") if 'rollout_reference="observed"' in b)
    scope = {}
    exec(compile(block, "docs/pipeline.md", "exec"), scope)
    assert scope["observed"].frames.shape == (1, 6, 3, 32, 32)
