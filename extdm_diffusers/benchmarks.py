"""One registry of the five ExtDM benchmarks: everything that conversion, data loading, training and evaluation
need to know about a benchmark, read from the original configs (``config/AE/*.yaml``, ``config/DM/*.yaml``),
the original training/evaluation scripts and the paper.

    from extdm_diffusers.benchmarks import get_benchmark

    kth = get_benchmark("KTH")               # names are case-insensitive
    kth.evaluation.pred_frames               # 40: the paper's 10 -> 40 protocol
    pipe = kth.random_pipeline()             # the paper-size pipeline with random weights

Choices where the original disagrees with itself are listed in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from .config_utils import deep_merge
from .data.sampling import ClipAugmentation

if TYPE_CHECKING:  # the registry is imported by the data package; models are imported lazily
    from .pipelines import ExtDMPipeline

_JITTER = {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.1}


@dataclass(frozen=True)
class AutoencoderTraining:
    """The original ``config/AE/*.yaml`` ``train_params`` and frame-pair sampling (``scripts/AE/train.py``)."""

    batch_size: int
    lr_milestones: Tuple[int, ...]
    lr_gamma: float
    num_epochs: int
    num_repeats: int
    min_frame_distance: int
    max_frame_distance: int
    augmentation: ClipAugmentation
    pyramid_scales: Tuple[float, ...] = (1.0, 0.5, 0.25)
    learning_rate: float = 2e-4
    adam_betas: Tuple[float, float] = (0.5, 0.999)
    perceptual_weights: Tuple[float, ...] = (10.0, 10.0, 10.0, 10.0, 10.0)
    equivariance_shift_weight: float = 10.0
    equivariance_affine_weight: float = 10.0
    sigma_affine: float = 0.05
    sigma_tps: float = 0.005
    points_tps: int = 5


@dataclass(frozen=True)
class DenoiserTraining:
    """The original ``config/DM/*.yaml`` ``diffusion_params.train_params`` (AdamW, betas (0.9, 0.999), wd 0)."""

    batch_size: int
    learning_rate: float
    lr_milestones: Tuple[int, ...]
    lr_gamma: float
    num_epochs: int
    num_repeats: int
    adam_betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    seed: int = 1234


@dataclass(frozen=True)
class EvaluationProtocol:
    """How the paper evaluates (``scripts/DM/valid.py`` and ``valid_DM_*.sh``).

    use_occlusion: whether the original evaluation estimates occlusion maps. Only Cityscapes passes
        ``--estimate_occlusion_map``; for the others the condition's occlusion channel is zeros and the decoder
        warps without occlusion.
    """

    cond_frames: int
    pred_frames: int
    use_occlusion: bool
    split: str = "test"
    num_videos: int = 256
    video_stride: int = 1
    num_samples: int = 100
    seed: int = 1000
    num_inference_steps: int = 10
    eta: float = 1.0


@dataclass(frozen=True)
class Benchmark:
    """A benchmark of the paper.

    frame_size: square frame side the models see (UCF-101 frames are stored ``frame_width`` wide and centre- or
        randomly-cropped to ``frame_size``). num_channels: channels the models see (grey datasets are repeated
        to 3, as the original loaders do). flow_autoencoder: the complete ``FlowAutoencoder`` constructor
        arguments. architecture: the original denoiser module the paper evaluates this benchmark with; its
        ``ExtDMUNet3DModel`` config comes from ``unet_config``.
    """

    name: str
    display_name: str
    frame_size: int
    num_channels: int
    flow_autoencoder: Dict[str, Any]
    architecture: str
    train_cond_frames: int
    train_pred_frames: int
    autoencoder_training: AutoencoderTraining
    denoiser_training: DenoiserTraining
    evaluation: EvaluationProtocol
    paper_results: Dict[str, float] = field(default_factory=dict)
    frame_width: Optional[int] = None
    notes: str = ""

    @property
    def crop_width(self) -> Optional[int]:
        """Width clips are cropped to, where frames are stored wider than ``frame_size``."""
        return self.frame_size if self.frame_width not in (None, self.frame_size) else None

    def flow_autoencoder_config(self, **overrides: Any) -> Dict[str, Any]:
        """``FlowAutoencoder`` constructor arguments, ``overrides`` deep-merged over the benchmark's."""
        return deep_merge(dict(self.flow_autoencoder, sample_size=self.frame_size), overrides)

    def unet_config(self, cond_feature_channels: int = 256, **overrides: Any) -> Dict[str, Any]:
        """``ExtDMUNet3DModel`` constructor arguments of the paper's denoiser for this benchmark (dim 64,
        dim_mults (1, 2, 4, 4), the training window), ``overrides`` merged over them."""
        from .conversion import original_unet_kwargs, unet_config_from_original

        kwargs = original_unet_kwargs(self.architecture, self.as_original_config())
        config = unet_config_from_original(self.architecture, **kwargs)
        config["cond_feature_channels"] = cond_feature_channels
        if config["condition_feature_mode"] == "trajectory_attention":  # attends from the embedded motion to the features
            config["motion_embedding_channels"] = cond_feature_channels
        return deep_merge(config, overrides)

    def as_original_config(self) -> Dict[str, Any]:
        """The parts of the original DM YAML that the conversion functions read."""
        return {
            "flow_params": {"model_params": copy.deepcopy(self.flow_autoencoder)},
            "dataset_params": {
                "frame_shape": self.frame_size,
                "train_params": {"cond_frames": self.train_cond_frames, "pred_frames": self.train_pred_frames},
                "valid_params": {"cond_frames": self.evaluation.cond_frames, "pred_frames": self.evaluation.pred_frames},
            },
        }

    def random_pipeline(self, **unet_overrides: Any) -> "ExtDMPipeline":
        """A pipeline of this benchmark's paper configuration with freshly initialised weights: for trying the
        API, benchmarks and smoke tests before any training exists."""
        from .models import ExtDMUNet3DModel, FlowAutoencoder
        from .pipelines import ExtDMPipeline
        from .schedulers import ExtDMDDIMScheduler

        autoencoder = FlowAutoencoder(**self.flow_autoencoder_config()).eval()
        unet = ExtDMUNet3DModel(**self.unet_config(autoencoder.feature_channels, **unet_overrides)).eval()
        return ExtDMPipeline(autoencoder, unet, ExtDMDDIMScheduler())


def _flow_params(num_regions: int, scale_factor: float = 0.5, bg_type: str = "affine") -> Dict[str, Any]:
    """The original ``flow_params.model_params``, complete; only these three values differ between benchmarks."""
    return {
        "num_regions": num_regions,
        "num_channels": 3,
        "estimate_affine": True,
        "revert_axis_swap": True,
        "bg_predictor_params": {"block_expansion": 32, "max_features": 1024, "num_blocks": 5, "bg_type": bg_type},
        "region_predictor_params": {
            "temperature": 0.1, "block_expansion": 32, "max_features": 1024, "scale_factor": scale_factor,
            "num_blocks": 5, "pca_based": True, "pad": 0, "fast_svd": False,
        },
        "generator_params": {
            "block_expansion": 64, "max_features": 512, "num_down_blocks": 2, "num_bottleneck_blocks": 6, "skips": True,
            "pixelwise_flow_predictor_params": {
                "block_expansion": 64, "max_features": 1024, "num_blocks": 5, "scale_factor": scale_factor,
                "use_deformed_source": True, "use_covar_heatmap": True, "estimate_occlusion_map": True,
            },
        },
    }


_WO_REF = "DenoiseNet_STWAtt_w_wo_ref_adaptor_cross_multi"
_TRAJ_ADA = "DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_ada"
_TRAJ_U12 = "DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_u12"
_TRAJ_ADA_U22 = "DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_ada_u22"

BENCHMARKS: Dict[str, Benchmark] = {
    "smmnist": Benchmark(
        "smmnist", "Stochastic Moving MNIST", 64, 3, _flow_params(10), _WO_REF, 10, 5,
        AutoencoderTraining(100, (50_000,), 0.5, 100, 10, 0, 10, ClipAugmentation(time_flip=True, **_JITTER)),
        DenoiserTraining(40, 2e-4, (100_000, 150_000), 0.8, 134, 1),
        EvaluationProtocol(10, 10, use_occlusion=True),
        paper_results={"fvd": 11.11},
        notes="The original SMMNIST evaluation cannot run (a SyntaxError in VideoFlowDiffusion_multi1248.py), so "
              "its occlusion setting is unknown; occlusion is on here, as in training.",
    ),
    "kth": Benchmark(
        "kth", "KTH", 64, 3, _flow_params(20), _TRAJ_ADA, 10, 20,
        AutoencoderTraining(256, (50_000,), 0.5, 1072, 25, 0, 20, ClipAugmentation(horizontal_flip=True, **_JITTER)),
        DenoiserTraining(36, 2e-4, (80_000, 150_000), 0.75, 26_000, 1),
        # the original calls KTH's held-out persons 21-25 "valid"; the builder names that split "test"
        EvaluationProtocol(10, 40, use_occlusion=False),
        paper_results={"fvd": 221.4, "psnr": 27.91, "ssim": 0.799, "lpips": 0.093},
    ),
    "bair": Benchmark(
        "bair", "BAIR robot pushing", 64, 3, _flow_params(10), _TRAJ_U12, 2, 10,
        AutoencoderTraining(100, (50_000,), 0.5, 100, 100, 10, 30, ClipAugmentation(**_JITTER)),
        DenoiserTraining(48, 1.5e-4, (70_000, 150_000), 0.8, 148, 2),
        EvaluationProtocol(2, 28, use_occlusion=False),
        paper_results={"fvd": 102.8},
    ),
    "cityscapes": Benchmark(
        "cityscapes", "Cityscapes", 128, 3, _flow_params(20, scale_factor=0.25, bg_type="perspective"), _TRAJ_ADA_U22, 2, 5,
        AutoencoderTraining(128, (20_000, 40_000), 0.5, 432, 20, 0, 30, ClipAugmentation(horizontal_flip=True, **_JITTER),
                            pyramid_scales=(1.0, 0.5, 0.25, 0.125)),
        DenoiserTraining(32, 1.2e-4, (100_000, 150_000), 0.75, 100_000, 1),
        EvaluationProtocol(2, 28, use_occlusion=True),
        paper_results={"fvd": 121.3},
    ),
    "ucf101": Benchmark(
        "ucf101", "UCF-101", 64, 3, _flow_params(64), _TRAJ_ADA_U22, 4, 8,
        AutoencoderTraining(100, (100_000, 150_000), 0.8, 21, 100, 0, 20, ClipAugmentation(horizontal_flip=True, **_JITTER)),
        DenoiserTraining(32, 2e-4, (100_000, 150_000), 0.8, 21, 32),
        # the paper evaluates 4 -> 12 (config/DM/ucf.yaml says 16); every 10th test video, centre crop
        EvaluationProtocol(4, 12, use_occlusion=True, video_stride=10),
        paper_results={"fvd": 394.1},
        frame_width=85,
        notes="No original evaluation script exists for UCF-101: the denoiser is the one scripts/DM/train.py "
              "builds (traj_ada_u22) and occlusion is on, as in training.",
    ),
}

_ALIASES = {"ucf": "ucf101", "ucf-101": "ucf101", "ucf_101": "ucf101", "bair_robot_pushing": "bair", "moving_mnist": "smmnist"}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark named ``name`` (case-insensitive; ``ucf``/``UCF-101`` mean ``ucf101``)."""
    if not isinstance(name, str):
        raise TypeError(f"`benchmark` must be a name, one of {sorted(BENCHMARKS)}, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)} (case-insensitive)")
    return BENCHMARKS[key]
