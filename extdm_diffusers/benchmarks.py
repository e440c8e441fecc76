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
import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple, Union

from .architectures import ARCHITECTURE_PRESETS, PAPER_UNET_CONFIG, TRAJ_ADA, TRAJ_ADA_U22, TRAJ_U12, WO_REF
from .config_utils import deep_merge
from .data.augmentation import ClipAugmentation

if TYPE_CHECKING:  # models and data sets are imported when first used
    import datasets

    from .data.clips import FramePairDataset, VideoClipDataset
    from .pipelines import ExtDMPipeline

PathOrDataset = Union[str, "os.PathLike[str]", "datasets.Dataset"]

_JITTER = {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.1}
# the default --seed of both training scripts
TRAINING_SEED = 1234


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
    seed: int = TRAINING_SEED


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
    seed: int = TRAINING_SEED


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
        """``ExtDMUNet3DModel`` constructor arguments of the paper's denoiser for this benchmark (the paper's sizes,
        the architecture's preset, the training window), ``overrides`` merged over them."""
        config = dict(
            PAPER_UNET_CONFIG,
            **ARCHITECTURE_PRESETS[self.architecture],
            num_cond_frames=self.train_cond_frames,
            num_pred_frames=self.train_pred_frames,
            cond_feature_channels=cond_feature_channels,
        )
        if config["condition_feature_mode"] == "trajectory_attention":  # attends from the embedded motion to the features
            config["motion_embedding_channels"] = cond_feature_channels
        return deep_merge(config, overrides)

    def clip_dataset(self, path_or_dataset: PathOrDataset, split: str, **overrides: Any) -> "VideoClipDataset":
        """The clips the original DM reads: for ``split == "train"`` random ``train_cond_frames + train_pred_frames``
        clips (not augmented, as the original's ``VideoDataset``), else the evaluation protocol's clips.
        ``overrides`` replace any ``VideoClipDataset`` argument."""
        from .data.clips import VideoClipDataset

        train = split == "train"
        protocol = self.evaluation
        kwargs: Dict[str, Any] = {
            "num_frames": (self.train_cond_frames + self.train_pred_frames) if train
            else (protocol.cond_frames + protocol.pred_frames),
            "train": train,
            "crop_width": self.crop_width,
        }
        if not train:
            kwargs.update(num_videos=protocol.num_videos, video_stride=protocol.video_stride)
        kwargs.update(overrides)
        return VideoClipDataset(_video_dataset(path_or_dataset, split), **kwargs)

    def frame_pairs(self, path_or_dataset: PathOrDataset, split: str = "train", **overrides: Any) -> "FramePairDataset":
        """The flow autoencoder's training pairs (the original's ``TwoFramesDataset``), with its augmentation and
        frame distances. ``overrides`` replace any ``FramePairDataset`` argument."""
        from .data.clips import FramePairDataset

        training = self.autoencoder_training
        kwargs: Dict[str, Any] = {
            "min_distance": training.min_frame_distance,
            "max_distance": training.max_frame_distance,
            "augmentation": training.augmentation,
            "crop_width": self.crop_width,
        }
        kwargs.update(overrides)
        return FramePairDataset(_video_dataset(path_or_dataset, split), **kwargs)

    def to_dict(self) -> Dict[str, Any]:
        """Every field, in JSON types (tuples become lists): ``Benchmark.from_dict(json.loads(json.dumps(b.to_dict())))
        == b``."""
        return _json_types(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Benchmark":
        """The benchmark that ``to_dict`` describes; an unknown or missing field raises an error naming it."""
        return _dataclass_from_dict(cls, data, "benchmark")

    def random_pipeline(self, **unet_overrides: Any) -> "ExtDMPipeline":
        """A pipeline of this benchmark's paper configuration with freshly initialised weights: for trying the
        API, benchmarks and smoke tests before any training exists."""
        from .models import ExtDMUNet3DModel, FlowAutoencoder
        from .pipelines import ExtDMPipeline
        from .schedulers import ExtDMDDIMScheduler

        autoencoder = FlowAutoencoder(**self.flow_autoencoder_config()).eval()
        unet = ExtDMUNet3DModel(**self.unet_config(autoencoder.feature_channels, **unet_overrides)).eval()
        return ExtDMPipeline(autoencoder, unet, ExtDMDDIMScheduler())


def _json_types(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _json_types(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_types(item) for item in value]
    return value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value


_NESTED_DATACLASSES = {cls.__name__: cls for cls in (AutoencoderTraining, DenoiserTraining, EvaluationProtocol, ClipAugmentation)}


def _dataclass_from_dict(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """``cls`` from a ``to_dict`` form: nested registry dataclasses rebuilt, lists of ``Tuple`` fields made tuples."""
    if not isinstance(data, Mapping):
        raise TypeError(f"`{where}` must be a mapping of {cls.__name__} fields, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"`{where}`: unknown fields {unknown}; {cls.__name__} has {sorted(fields)}")
    missing = sorted(name for name, f in fields.items() if name not in data and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise ValueError(f"`{where}`: missing fields {missing}")
    kwargs = {}
    for name, value in data.items():
        annotation = str(fields[name].type)  # a string: this module uses postponed annotations
        if annotation in _NESTED_DATACLASSES:
            value = _dataclass_from_dict(_NESTED_DATACLASSES[annotation], value, f"{where}.{name}")
        elif annotation.startswith("Tuple"):
            value = _tuples(value)
        else:
            value = copy.deepcopy(value)
        kwargs[name] = value
    return cls(**kwargs)


def _video_dataset(path_or_dataset: PathOrDataset, split: str) -> "datasets.Dataset":
    import datasets

    from .data.clips import load_video_dataset

    return path_or_dataset if isinstance(path_or_dataset, datasets.Dataset) else load_video_dataset(path_or_dataset, split)


def _flow_params(num_regions: int, scale_factor: Optional[float] = None, bg_type: Optional[str] = None) -> Dict[str, Any]:
    """The original ``flow_params.model_params``, complete: only these three values differ between benchmarks
    (``None``: the model's default)."""
    from .models.flow_autoencoder import FlowAutoencoder

    changes: Dict[str, Any] = {"num_regions": num_regions}
    if scale_factor is not None:
        changes["region_predictor_params"] = {"scale_factor": scale_factor}
        changes["generator_params"] = {"pixelwise_flow_predictor_params": {"scale_factor": scale_factor}}
    if bg_type is not None:
        changes["bg_predictor_params"] = {"bg_type": bg_type}
    return FlowAutoencoder.complete_config(**changes)


BENCHMARKS: Dict[str, Benchmark] = {
    "smmnist": Benchmark(
        name="smmnist",
        display_name="Stochastic Moving MNIST",
        frame_size=64,
        num_channels=3,
        flow_autoencoder=_flow_params(num_regions=10),
        architecture=WO_REF,
        train_cond_frames=10,
        train_pred_frames=5,
        autoencoder_training=AutoencoderTraining(
            batch_size=100, lr_milestones=(50_000,), lr_gamma=0.5, num_epochs=100, num_repeats=10,
            min_frame_distance=0, max_frame_distance=10, augmentation=ClipAugmentation(time_flip=True, **_JITTER),
        ),
        denoiser_training=DenoiserTraining(
            batch_size=40, learning_rate=2e-4, lr_milestones=(100_000, 150_000), lr_gamma=0.8, num_epochs=134,
            num_repeats=1,
        ),
        evaluation=EvaluationProtocol(cond_frames=10, pred_frames=10, use_occlusion=True),
        paper_results={"fvd": 11.11},
        notes="The original SMMNIST evaluation cannot run (a SyntaxError in VideoFlowDiffusion_multi1248.py), so "
              "its occlusion setting is unknown; occlusion is on here, as in training.",
    ),
    "kth": Benchmark(
        name="kth",
        display_name="KTH",
        frame_size=64,
        num_channels=3,
        flow_autoencoder=_flow_params(num_regions=20),
        architecture=TRAJ_ADA,
        train_cond_frames=10,
        train_pred_frames=20,
        autoencoder_training=AutoencoderTraining(
            batch_size=256, lr_milestones=(50_000,), lr_gamma=0.5, num_epochs=1072, num_repeats=25,
            min_frame_distance=0, max_frame_distance=20, augmentation=ClipAugmentation(horizontal_flip=True, **_JITTER),
        ),
        denoiser_training=DenoiserTraining(
            batch_size=36, learning_rate=2e-4, lr_milestones=(80_000, 150_000), lr_gamma=0.75, num_epochs=26_000,
            num_repeats=1,
        ),
        # the original calls KTH's held-out persons 21-25 "valid"; the builder names that split "test"
        evaluation=EvaluationProtocol(cond_frames=10, pred_frames=40, use_occlusion=False),
        paper_results={"fvd": 221.4, "psnr": 27.91, "ssim": 0.799, "lpips": 0.093},
    ),
    "bair": Benchmark(
        name="bair",
        display_name="BAIR robot pushing",
        frame_size=64,
        num_channels=3,
        flow_autoencoder=_flow_params(num_regions=10),
        architecture=TRAJ_U12,
        train_cond_frames=2,
        train_pred_frames=10,
        autoencoder_training=AutoencoderTraining(
            batch_size=100, lr_milestones=(50_000,), lr_gamma=0.5, num_epochs=100, num_repeats=100,
            min_frame_distance=10, max_frame_distance=30, augmentation=ClipAugmentation(**_JITTER),
        ),
        denoiser_training=DenoiserTraining(
            batch_size=48, learning_rate=1.5e-4, lr_milestones=(70_000, 150_000), lr_gamma=0.8, num_epochs=148,
            num_repeats=2,
        ),
        evaluation=EvaluationProtocol(cond_frames=2, pred_frames=28, use_occlusion=False),
        paper_results={"fvd": 102.8},
    ),
    "cityscapes": Benchmark(
        name="cityscapes",
        display_name="Cityscapes",
        frame_size=128,
        num_channels=3,
        flow_autoencoder=_flow_params(num_regions=20, scale_factor=0.25, bg_type="perspective"),
        architecture=TRAJ_ADA_U22,
        train_cond_frames=2,
        train_pred_frames=5,
        autoencoder_training=AutoencoderTraining(
            batch_size=128, lr_milestones=(20_000, 40_000), lr_gamma=0.5, num_epochs=432, num_repeats=20,
            min_frame_distance=0, max_frame_distance=30, augmentation=ClipAugmentation(horizontal_flip=True, **_JITTER),
            pyramid_scales=(1.0, 0.5, 0.25, 0.125),
        ),
        denoiser_training=DenoiserTraining(
            batch_size=32, learning_rate=1.2e-4, lr_milestones=(100_000, 150_000), lr_gamma=0.75, num_epochs=100_000,
            num_repeats=1,
        ),
        evaluation=EvaluationProtocol(cond_frames=2, pred_frames=28, use_occlusion=True),
        paper_results={"fvd": 121.3},
    ),
    "ucf101": Benchmark(
        name="ucf101",
        display_name="UCF-101",
        frame_size=64,
        num_channels=3,
        flow_autoencoder=_flow_params(num_regions=64),
        architecture=TRAJ_ADA_U22,
        train_cond_frames=4,
        train_pred_frames=8,
        autoencoder_training=AutoencoderTraining(
            batch_size=100, lr_milestones=(100_000, 150_000), lr_gamma=0.8, num_epochs=21, num_repeats=100,
            min_frame_distance=0, max_frame_distance=20, augmentation=ClipAugmentation(horizontal_flip=True, **_JITTER),
        ),
        denoiser_training=DenoiserTraining(
            batch_size=32, learning_rate=2e-4, lr_milestones=(100_000, 150_000), lr_gamma=0.8, num_epochs=21,
            num_repeats=32,
        ),
        # the paper evaluates 4 -> 12 (config/DM/ucf.yaml says 16); every 10th test video, centre crop
        evaluation=EvaluationProtocol(cond_frames=4, pred_frames=12, use_occlusion=True, video_stride=10),
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
