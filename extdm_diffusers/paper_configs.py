"""The paper's configurations (the original ``config/DM/*.yaml``) as data: the autoencoder parameters, the
denoiser architecture, the training window and the evaluation horizon of each benchmark."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

from .conversion import original_unet_kwargs, unet_config_from_original
from .models import ExtDMUNet3DModel, FlowAutoencoder
from .pipelines import ExtDMPipeline
from .schedulers import ExtDMDDIMScheduler


@dataclass(frozen=True)
class PaperConfig:
    name: str
    frame_size: int
    architecture: str
    train_cond_frames: int
    train_pred_frames: int
    eval_cond_frames: int
    eval_pred_frames: int
    flow_params: Dict[str, Any] = field(default_factory=dict)

    def as_original_config(self) -> dict:
        """The parts of the original YAML the conversion functions read."""
        return {
            "flow_params": {"model_params": dict(self.flow_params)},
            "dataset_params": {
                "frame_shape": self.frame_size,
                "train_params": {"cond_frames": self.train_cond_frames, "pred_frames": self.train_pred_frames},
                "valid_params": {"cond_frames": self.eval_cond_frames, "pred_frames": self.eval_pred_frames},
            },
        }

    def random_pipeline(self) -> ExtDMPipeline:
        """A pipeline of this configuration with freshly initialised weights (benchmarks, smoke tests)."""
        config = self.as_original_config()
        autoencoder = FlowAutoencoder(**self.flow_params, sample_size=self.frame_size).eval()
        unet_config = unet_config_from_original(self.architecture, **original_unet_kwargs(self.architecture, config))
        return ExtDMPipeline(autoencoder, ExtDMUNet3DModel(**unet_config).eval(), ExtDMDDIMScheduler())


def _flow_params(num_regions: int, scale_factor: float = 0.5, bg_type: str = "affine") -> Dict[str, Any]:
    # Only these differ between the benchmarks; the rest is FlowAutoencoder's defaults (the same YAML values).
    return {
        "num_regions": num_regions,
        "bg_predictor_params": {"bg_type": bg_type},
        "region_predictor_params": {"scale_factor": scale_factor},
        "generator_params": {"pixelwise_flow_predictor_params": {"scale_factor": scale_factor}},
    }


PAPER_CONFIGS: Dict[str, PaperConfig] = {
    "smmnist": PaperConfig("smmnist", 64, "DenoiseNet_STWAtt_w_wo_ref_adaptor_cross_multi", 10, 5, 10, 10, _flow_params(10)),
    "kth": PaperConfig("kth", 64, "DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_ada", 10, 20, 10, 40, _flow_params(20)),
    "bair": PaperConfig("bair", 64, "DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_u12", 2, 10, 2, 28, _flow_params(10)),
    "cityscapes": PaperConfig(
        "cityscapes", 128, "DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_ada_u22", 2, 5, 2, 28,
        _flow_params(20, scale_factor=0.25, bg_type="perspective"),
    ),
}
