"""diffusers conformance: the models and the pipeline under the machinery a diffusers user reaches for (layerwise
casting, group offloading, accelerate's offloading hooks, device_map="auto", torch.compile and torch.export,
gradient checkpointing), the latent output and the batch forms of diffusers' VideoProcessor. On the CPU."""

import copy
import numpy as np
import pytest
import torch
from accelerate import cpu_offload

from extdm_diffusers import ExtDMPipeline, ExtDMUNet3DModel, FlowAutoencoder
from extdm_diffusers.conversion import flow_autoencoder_from_original
from reference_cases import load_case, split_autoencoder

# the three condition paths of the released models, and the Cityscapes block layout
LAYOUTS = {
    "wo_ref": dict(include_reference_motion=False),
    "traj_ada": dict(motion_embedding_channels=8, condition_feature_mode="adaptor"),
    "traj_u12": dict(motion_embedding_channels=8, condition_feature_mode="trajectory_attention"),
    "grouped": dict(condition_feature_mode="adaptor", block_layout="grouped", block_temporal_attention=True,
                    adaptor_kernel_size=(3, 3, 3)),
}


def tiny_unet(layout: str, channel_mults=(1, 2)) -> ExtDMUNet3DModel:
    torch.manual_seed(0)
    model = ExtDMUNet3DModel(
        num_cond_frames=2, num_pred_frames=2, cond_feature_channels=8, base_channels=8, channel_mults=channel_mults,
        resnet_groups=4, attention_heads=2, attention_head_dim=8, adaptor_zero_init=False, **LAYOUTS[layout],
    )
    for p in model.parameters():  # zero-initialised layers would hide a skipped hook
        if not p.abs().sum():
            torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def unet_inputs(model: ExtDMUNet3DModel, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    cfg = model.config
    return dict(
        sample=torch.randn(batch, 3, cfg.num_pred_frames, 8, 8, generator=g),
        timestep=torch.tensor([10, 500])[:batch],
        cond_motion=torch.randn(batch, 3, cfg.num_cond_frames, 8, 8, generator=g).clamp(-1, 1),
        cond_features=torch.randn(batch, cfg.cond_feature_channels, model.num_feature_frames, 4, 4, generator=g),
    )


@pytest.fixture
def autoencoder():
    meta, tensors, state_dict = load_case("ae_affine_32")
    return tensors, flow_autoencoder_from_original(split_autoencoder(state_dict), meta["config"]).eval()


@torch.no_grad()
def reference_output(layout: str, channel_mults=(1, 2)) -> torch.Tensor:
    model = tiny_unet(layout, channel_mults)
    return model(**unet_inputs(model)).sample


@torch.no_grad()
def assert_both_routes_match(model: ExtDMUNet3DModel, expected: torch.Tensor) -> None:
    """``forward`` alone, and the pipeline's route (the condition prepared once, outside ``forward``)."""
    inputs = unet_inputs(model)
    out = model(**inputs).sample
    prepared = model(**inputs, condition=model.prepare_condition(inputs["cond_motion"], inputs["cond_features"])).sample
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(prepared, expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------ memory hooks
@pytest.mark.parametrize("layout", ["wo_ref", "traj_ada", "traj_u12"])
def test_layerwise_casting_stores_fp8_and_computes_in_bfloat16(layout):
    model = tiny_unet(layout).to(torch.bfloat16)
    expected = model(**{k: v.bfloat16() if v.is_floating_point() else v for k, v in unet_inputs(model).items()}).sample
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    assert model.conv_in.weight.dtype == model.down_blocks[0].resnet1.conv1.weight.dtype == torch.float8_e4m3fn
    inputs = {k: v.bfloat16() if v.is_floating_point() else v for k, v in unet_inputs(model).items()}
    with torch.no_grad():
        out = model(**inputs).sample
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape and torch.isfinite(out).all()
    # fp8 weights (3 mantissa bits): close to the bfloat16 model, not equal
    assert (out.float() - expected.float()).norm() / expected.float().norm() < 0.25


@pytest.mark.parametrize("layout", ["wo_ref", "traj_ada", "traj_u12", "grouped"])
@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
def test_group_offloading_to_disk_matches(layout, offload_type, tmp_path):
    expected = reference_output(layout)
    model = tiny_unet(layout)
    extra = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
    model.enable_group_offload(torch.device("cpu"), offload_device=torch.device("cpu"), offload_type=offload_type,
                               offload_to_disk_path=str(tmp_path), **extra)
    assert list(tmp_path.glob("*.safetensors"))
    assert_both_routes_match(model, expected)


@pytest.mark.parametrize("layout", ["wo_ref", "traj_u12"])
def test_accelerate_sequential_offload_hooks(layout):
    """accelerate's cpu_offload: every module's weights live on the meta device until its hook loads them."""
    expected = reference_output(layout)
    model = tiny_unet(layout)
    cpu_offload(model, execution_device=torch.device("cpu"))
    assert model.conv_in.weight.device.type == "meta"
    assert_both_routes_match(model, expected)


def test_pipeline_with_both_models_group_offloaded_to_disk(reference_pipeline_factory, tmp_path):
    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")
    video = t["inputs.video"].permute(0, 2, 1, 3, 4)
    kwargs = dict(eta=0.0, latents=t["inputs.initial_noise"], num_inference_steps=3, output_type="pt")
    expected = pipe(video, **kwargs).frames
    for name in ("unet", "flow_autoencoder"):  # the pipeline calls prepare_condition, encode, decode: not forward
        getattr(pipe, name).enable_group_offload(torch.device("cpu"), offload_device=torch.device("cpu"),
                                                 offload_type="block_level", num_blocks_per_group=1,
                                                 offload_to_disk_path=str(tmp_path / name))
    # weights read back from disk are aligned differently, and oneDNN picks kernels by alignment: rounding, over
    # three steps and the decoder (diffusers' pipeline mixin allows 1e-4 here too)
    torch.testing.assert_close(pipe(video, **kwargs).frames, expected, rtol=0, atol=1e-4)


def test_pipeline_with_both_models_sequentially_offloaded(reference_pipeline_factory):
    """The hooks enable_sequential_cpu_offload installs (accelerate's cpu_offload on each model, weights on the
    meta device until a layer runs), called twice: every layer the pipeline reaches gets its weights back and
    gives them up again. On the CPU diffusers itself asks for device "cpu:0", for which torch's Parameter.to
    returns a plain tensor that accelerate cannot offload again (diffusers' own DDPMPipeline fails the same way);
    the execution device a GPU gives is what is tested here."""
    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")
    video = t["inputs.video"].permute(0, 2, 1, 3, 4)
    kwargs = dict(eta=0.0, latents=t["inputs.initial_noise"], num_inference_steps=3, output_type="pt")
    expected = pipe(video, **kwargs).frames
    for model in (pipe.unet, pipe.flow_autoencoder):
        cpu_offload(model, execution_device=torch.device("cpu"), offload_buffers=True)
    assert pipe.flow_autoencoder.region_predictor.regions.weight.device.type == "meta"
    for _ in range(2):
        torch.testing.assert_close(pipe(video, **kwargs).frames, expected, rtol=0, atol=1e-5)
    assert pipe.unet.conv_in.weight.device.type == "meta"


# ------------------------------------------------------------------------------------------ device_map
def test_device_map_auto_loads_both_models(tmp_path, autoencoder):
    assert ExtDMUNet3DModel._no_split_modules and FlowAutoencoder._no_split_modules
    model = tiny_unet("traj_ada")
    model.save_pretrained(tmp_path / "unet")
    loaded = ExtDMUNet3DModel.from_pretrained(tmp_path / "unet", device_map="auto")
    assert set(loaded.hf_device_map.values()) == {"cpu"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**unet_inputs(loaded)).sample, reference_output("traj_ada"), rtol=0, atol=1e-5)

    t, autoencoder = autoencoder
    autoencoder.save_pretrained(tmp_path / "ae")
    loaded = FlowAutoencoder.from_pretrained(tmp_path / "ae", device_map="auto")
    with torch.no_grad():
        expected = autoencoder(t["inputs.source"], t["inputs.driving"]).prediction
        torch.testing.assert_close(loaded(t["inputs.source"], t["inputs.driving"]).prediction, expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------ compile, export
@pytest.mark.parametrize("layout", ["traj_ada", "traj_u12"])
def test_torch_compile_fullgraph(layout):
    """One graph, whose batch dimension stays symbolic: it serves a batch of 3 too (the input check once hashed
    the batch sizes, which fixed them to the first call's; with the dimension marked dynamic, that is an error)."""
    torch._dynamo.reset()
    model = tiny_unet(layout, channel_mults=(1,))  # one level: every block kind, a shorter trace
    inputs = unet_inputs(model)
    for tensor in inputs.values():
        torch._dynamo.mark_dynamic(tensor, 0)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        torch.testing.assert_close(compiled(**inputs).sample, reference_output(layout, (1,)), rtol=0, atol=1e-5)
        three = {k: torch.cat([v, v[:1]]) for k, v in inputs.items()}
        torch.testing.assert_close(compiled(**three).sample, model(**three).sample, rtol=0, atol=1e-5)


def test_flow_autoencoder_compiles_once_for_every_frame_size(autoencoder):
    """diffusers' test_compile_on_different_shapes: with dynamic shapes one graph serves 32 and 64 px (the input
    checks once hashed the sizes, which fixed them to the first call's)."""
    t, model = autoencoder
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="eager")
    # clones: the fixture's tensors are views of one buffer, and dynamo guards on a view's base, which the 64 px
    # frames (not views) lack
    small = tuple(t[f"inputs.{n}"].clone() for n in ("source", "driving"))
    sizes = (small, tuple(torch.nn.functional.interpolate(x, scale_factor=2.0) for x in small))
    with torch.no_grad():
        expected = [model(source, driving).prediction for source, driving in sizes]
        # as the mixin: no sizes shared between inputs (torch's config patch: it restores what it changed)
        with torch._dynamo.config.patch(error_on_recompile=True), torch.fx.experimental._config.patch(use_duck_shape=False):
            for (source, driving), prediction in zip(sizes, expected):
                torch.testing.assert_close(compiled(source, driving).prediction, prediction, rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout", ["traj_u12"])
def test_torch_export(layout):
    model = tiny_unet(layout, channel_mults=(1,))
    inputs = unet_inputs(model)
    with torch.no_grad():
        exported = torch.export.export(model, (), {**inputs, "return_dict": False})
        out = exported.module()(**inputs, return_dict=False)[0]
    torch.testing.assert_close(out, reference_output(layout, (1,)), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------ gradient checkpointing
def test_flow_autoencoder_gradient_checkpointing_gives_the_same_gradients(autoencoder):
    t, model = autoencoder
    model.train()
    grads, checkpointed = [], []
    for checkpointing in (False, True):
        model.zero_grad()
        if checkpointing:
            model.enable_gradient_checkpointing()
            checkpoint = model._gradient_checkpointing_func
            model._gradient_checkpointing_func = lambda network, *args: checkpointed.append(network) or checkpoint(network, *args)
        out = model(t["inputs.source"], t["inputs.driving"])
        (out.prediction.square().mean() + out.optical_flow.square().mean()).backward()
        grads.append([p.grad.clone() for p in (model.generator.first.conv.weight, model.region_predictor.regions.weight,
                                              model.pixelwise_flow_predictor.mask.weight)])
    for plain, checkpointed_grad in zip(*grads):
        torch.testing.assert_close(checkpointed_grad, plain)
    # the region predictions (source and driving in one pass), the background, the dense motion, the generator's
    # encoder and decoder
    assert len(checkpointed) == 5



def test_flow_autoencoder_gradient_checkpointing_updates_batch_norm_statistics_once(autoencoder):
    """The backward pass recomputes each checkpointed network: its batch norms must not count the batch twice."""
    t, model = autoencoder
    buffers = []
    for checkpointing in (False, True):
        trained = copy.deepcopy(model).train()
        if checkpointing:
            trained.enable_gradient_checkpointing()
        trained(t["inputs.source"], t["inputs.driving"]).prediction.square().mean().backward()
        buffers.append({k: v for k, v in trained.state_dict().items() if "running_" in k or "num_batches" in k})
    assert len(buffers[0]) > 0 and buffers[0].keys() == buffers[1].keys()
    for name, plain in buffers[0].items():
        torch.testing.assert_close(buffers[1][name], plain, rtol=0, atol=0, msg=name)
    assert all(m.momentum == model.region_predictor.predictor.encoder.down_blocks[0].norm.momentum
               for m in trained.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))

# ------------------------------------------------------------------------------------------ pipeline outputs
def test_latent_output_is_what_the_denoiser_produced(reference_pipeline_factory):
    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")
    video = t["inputs.video"].permute(0, 2, 1, 3, 4)

    def zero_last(pipeline, step, timestep, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])} if step == pipeline.num_timesteps - 1 else {}

    zeroed = pipe(video, num_inference_steps=2, output_type="latent", callback_on_step_end=zero_last).frames
    assert zeroed.shape == (1, 3, 5, 16, 16) and not zeroed.abs().sum()

    # seven frames: two windows, the second cut short; the latent decodes to the frames
    noise = torch.randn(1, 3, 10, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = dict(num_frames=7, num_inference_steps=3, eta=0.0, latents=noise)
    decoded = pipe(video, output_type="pt", return_motion=True, **kwargs)
    latent = pipe(video, output_type="latent", **kwargs)
    assert latent.frames.shape == (1, 3, 7, 16, 16)
    torch.testing.assert_close(pipe.motion_to_output(latent.frames), decoded.motion, rtol=0, atol=0)
    torch.testing.assert_close(pipe.decode_latents(video, latent.frames, output_type="pt"), decoded.frames, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"`latents` must have shape \(N, 3, T, h, w\)"):
        pipe.decode_latents(video, latent.frames[:, :2])


def test_every_video_processor_batch_form_gives_the_stacked_result(reference_pipeline_factory):
    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")
    video = t["inputs.video"].permute(0, 2, 1, 3, 4)
    video = torch.cat([video, video.flip(-1)])  # (2, T, C, H, W)
    assert torch.equal(ExtDMPipeline.preprocess_video(pipe, video), video)
    arrays = video.permute(0, 1, 3, 4, 2).numpy()
    forms = {
        "list of (T, C, H, W) tensors": list(video),
        "list of (T, H, W, C) arrays": list(arrays),
        "(B, T, H, W, C) array": arrays,
        "list of (B, T, C, H, W) tensors": [video[:1], video[1:]],
    }
    for name, form in forms.items():
        torch.testing.assert_close(pipe.preprocess_video(form), video, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(pipe.preprocess_video(video[0]), video[:1], rtol=0, atol=0)  # (T, C, H, W): one video

    noise = torch.randn(2, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = dict(num_inference_steps=2, eta=0.0, latents=noise, output_type="pt")
    expected = pipe(video, **kwargs).frames
    torch.testing.assert_close(pipe(list(video), **kwargs).frames, expected, rtol=0, atol=0)
    torch.testing.assert_close(pipe(list(arrays), **kwargs).frames, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"`video` as a list must hold videos of one shape"):
        pipe([video[0], video[0, :, :, :16]])
