"""diffusers' own model and pipeline tester mixins (diffusers main, tests/models/testing_utils and
tests/pipelines/test_pipelines_common.py) on tiny ExtDM models. Not part of the project's test suite (pytest's
``testpaths`` is ``tests``); run it against a diffusers checkout, from the project root:

    PYTHONPATH=/path/to/diffusers OMP_NUM_THREADS=1 python -m pytest -q -rA benchmarks/diffusers_mixins/extdm_mixins.py

The outcome is tabulated in docs/models.md.
"""

import sys
import unittest
from pathlib import Path

import diffusers.loaders
import torch

# diffusers main's pipeline tests import names that the installed release may lack; they serve only tests of other
# pipelines (IP adapters), so a stand-in class keeps the module importable
for _name in ("FluxIPAdapterMixin", "IPAdapterMixin"):
    if not hasattr(diffusers.loaders, _name):
        setattr(diffusers.loaders, _name, type(_name, (), {}))

from tests.models.testing_utils import (  # noqa: E402
    BaseModelTesterConfig,
    CPUOffloadTesterMixin,
    GroupOffloadTesterMixin,
    LayerwiseCastingTesterMixin,
    ModelTesterMixin,
    TorchCompileTesterMixin,
    TrainingTesterMixin,
)
from tests.pipelines.test_pipelines_common import PipelineTesterMixin  # noqa: E402

from extdm_diffusers import ExtDMDDIMScheduler, ExtDMPipeline, ExtDMUNet3DModel, FlowAutoencoder

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from reference_cases import load_case  # noqa: E402  (the project's fixture configs)

UNET_LAYOUTS = {
    "wo_ref": dict(include_reference_motion=False),
    "traj_ada": dict(motion_embedding_channels=8, condition_feature_mode="adaptor"),
    "traj_u12": dict(motion_embedding_channels=8, condition_feature_mode="trajectory_attention"),
}
MIXINS = (ModelTesterMixin, TrainingTesterMixin, CPUOffloadTesterMixin, GroupOffloadTesterMixin,
          LayerwiseCastingTesterMixin, TorchCompileTesterMixin)


class UNetConfig(BaseModelTesterConfig):
    layout = "wo_ref"
    main_input_name = "sample"

    @property
    def model_class(self):
        return ExtDMUNet3DModel

    @property
    def output_shape(self):
        return (3, 2, 8, 8)

    def get_init_dict(self):
        return dict(num_cond_frames=2, num_pred_frames=2, cond_feature_channels=8, base_channels=8, channel_mults=(1, 2),
                    resnet_groups=4, attention_heads=2, attention_head_dim=8, **UNET_LAYOUTS[self.layout])

    def get_dummy_inputs(self, height: int = 8, width: int = 8):
        g = torch.Generator().manual_seed(0)
        frames = 2 + 2 - (self.layout == "wo_ref")
        return dict(
            sample=torch.randn(2, 3, 2, height, width, generator=g),
            timestep=torch.tensor([10, 500]),
            cond_motion=torch.randn(2, 3, 2, height, width, generator=g).clamp(-1, 1),
            cond_features=torch.randn(2, 8, frames, height // 2, width // 2, generator=g),
        )

    @property
    def different_shapes_for_compilation(self):
        # every level's maps at least the (2, 4, 4) window: below it the window is clipped and its shift dropped (as
        # in the original), another graph, which the test's error_on_recompile would count as a recompilation
        return [(16, 16), (32, 32)]


class TestUNetWoRef(UNetConfig, *MIXINS):
    layout = "wo_ref"

    def test_gradient_checkpointing_is_applied(self):
        super().test_gradient_checkpointing_is_applied(expected_set={"ExtDMUNet3DModel"})


class TestUNetTrajAda(TestUNetWoRef):
    layout = "traj_ada"


class TestUNetTrajU12(TestUNetWoRef):
    layout = "traj_u12"


class FlowAutoencoderConfig(BaseModelTesterConfig):
    main_input_name = "source"

    @property
    def model_class(self):
        return FlowAutoencoder

    @property
    def output_shape(self):
        return (3, 32, 32)

    def get_init_dict(self):
        return dict(load_case("ae_affine_32")[0]["config"])

    def get_dummy_inputs(self, height: int = 32, width: int = 32):
        g = torch.Generator().manual_seed(0)
        return dict(source=torch.rand(2, 3, height, width, generator=g), driving=torch.rand(2, 3, height, width, generator=g))

    @property
    def different_shapes_for_compilation(self):
        return [(32, 32), (64, 64)]


class TestFlowAutoencoder(FlowAutoencoderConfig, *MIXINS):
    def test_gradient_checkpointing_is_applied(self):
        super().test_gradient_checkpointing_is_applied(expected_set={"FlowAutoencoder"})


class TestExtDMPipeline(PipelineTesterMixin, unittest.TestCase):
    pipeline_class = ExtDMPipeline
    params = frozenset(["video", "num_frames", "num_inference_steps", "eta", "use_occlusion", "num_samples_per_video"])
    batch_params = frozenset(["video"])
    # video prediction has no prompt: one prediction per video is `num_samples_per_video`
    required_optional_params = PipelineTesterMixin.required_optional_params - {"num_images_per_prompt"}
    callback_cfg_params = frozenset()
    test_attention_slicing = False
    test_xformers_attention = False
    test_layerwise_casting = True
    test_group_offloading = True

    def get_dummy_components(self):
        torch.manual_seed(0)
        autoencoder = FlowAutoencoder(**load_case("ae_affine_32")[0]["config"], sample_size=32)
        torch.manual_seed(0)
        unet = ExtDMUNet3DModel(num_cond_frames=2, num_pred_frames=2, cond_feature_channels=autoencoder.feature_channels,
                                base_channels=8, channel_mults=(1, 2), resnet_groups=4, attention_heads=2, attention_head_dim=8,
                                motion_embedding_channels=autoencoder.feature_channels, condition_feature_mode="adaptor")
        # in eval mode, as from_pretrained gives them: the autoencoder's batch norms would otherwise normalise with
        # the batch's statistics (and update their running ones) at every call
        return {"flow_autoencoder": autoencoder.eval(), "unet": unet.eval(), "scheduler": ExtDMDDIMScheduler()}

    def get_dummy_inputs(self, device, seed=0):
        generator = torch.Generator("cpu").manual_seed(seed)
        video = torch.rand(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        return {"video": video, "num_inference_steps": 2, "eta": 0.0, "generator": generator, "output_type": "np"}
