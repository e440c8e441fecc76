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

    def decodes_with_occlusion(self, autoencoder_estimates_occlusion: bool) -> bool:
        """Whether predictions are decoded with occlusion maps: where the protocol uses them and the autoencoder
        estimates them. An autoencoder without maps decodes plain warps (training's validation, ``extdm-predict``
        and ``extdm-evaluate`` all read this)."""
        return self.use_occlusion and autoencoder_estimates_occlusion


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
        """``FlowAutoencoder`` constructor arguments, ``overrides`` deep-merged over the benchmark's (its
        ``frame_size`` and ``num_channels`` are the autoencoder's ``sample_size`` and ``num_channels``)."""
        return deep_merge(dict(self.flow_autoencoder, sample_size=self.frame_size, num_channels=self.num_channels), overrides)

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

    def for_models(self, flow_autoencoder: Mapping[str, Any], unet: Mapping[str, Any],
                   architecture: Optional[str] = None) -> "Benchmark":
        """This benchmark as models of configs ``flow_autoencoder`` and ``unet`` (``model.config``) realise it: what
        a trained or converted pipeline records. The autoencoder's config, frame size and channels, the
        denoiser's window (also the evaluation's ``cond_frames``) and ``architecture`` replace the benchmark's."""
        from .models.flow_autoencoder import FlowAutoencoder

        keys = FlowAutoencoder.complete_config()
        autoencoder = {k: copy.deepcopy(v) for k, v in flow_autoencoder.items() if k in keys}
        num_cond, num_pred = int(unet["num_cond_frames"]), int(unet["num_pred_frames"])
        return dataclasses.replace(
            self, flow_autoencoder=_json_types(autoencoder),
            frame_size=flow_autoencoder.get("sample_size") or self.frame_size,
            num_channels=autoencoder.get("num_channels", self.num_channels),
            architecture=architecture or self.architecture, train_cond_frames=num_cond, train_pred_frames=num_pred,
            evaluation=dataclasses.replace(self.evaluation, cond_frames=num_cond),
        )

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


# ---------------------------------------------------------------------------------------------------------------
# Benchmarks defined in a file

#: The file suffixes ``load_benchmark`` reads as a benchmark definition.
BENCHMARK_FILE_SUFFIXES = (".json", ".yaml", ".yml")
#: The one key a benchmark file may hold beyond ``Benchmark``'s fields: the registry entry it is deep-merged over.
BASE_KEY = "base"
BenchmarkSpec = Union[str, "os.PathLike[str]", Mapping[str, Any], Benchmark]


class BenchmarkDefinitionError(ValueError):
    """A benchmark definition (file or dict) that cannot be used; the message names the key and what is allowed."""


def load_benchmark(name_or_path: BenchmarkSpec) -> Benchmark:
    """The benchmark ``name_or_path`` names: a registry name (``get_benchmark``), a ``.json`` / ``.yaml`` file,
    a dict in the same form, or a ``Benchmark``. A file or dict holds every field (``Benchmark.to_dict``'s form)
    or, with ``"base": NAME``, only the fields that differ, deep-merged over that registry entry. The result is
    validated (``validate_benchmark``) before anything uses it."""
    if isinstance(name_or_path, Benchmark):
        return name_or_path
    if isinstance(name_or_path, Mapping):
        return benchmark_from_definition(name_or_path)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"`benchmark` must be a registry name {sorted(BENCHMARKS)} or a .json/.yaml file, "
                        f"got {type(name_or_path).__name__}")
    path = os.fspath(name_or_path)
    if not (path.lower().endswith(BENCHMARK_FILE_SUFFIXES) or os.sep in path or os.path.isfile(path)):
        return get_benchmark(path)
    return benchmark_from_definition(read_benchmark_file(path), where=path)


def read_benchmark_file(path: str) -> Dict[str, Any]:
    """The mapping a ``.json`` / ``.yaml`` benchmark file holds (JSON is YAML, so any suffix parses)."""
    import yaml

    if not os.path.isfile(path):
        raise BenchmarkDefinitionError(f"benchmark file not found: {path} (or name one of {sorted(BENCHMARKS)})")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise BenchmarkDefinitionError(f"{path} is not valid JSON/YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BenchmarkDefinitionError(f"{path} must hold a mapping of benchmark fields, got {type(data).__name__}")
    return data


def benchmark_from_definition(data: Mapping[str, Any], where: str = "benchmark") -> Benchmark:
    """A validated ``Benchmark`` from a full definition or a partial one over ``data["base"]``.

    Over a base, a definition that renames the benchmark inherits neither the base's ``paper_results`` (they
    are the paper's numbers on the base's data) nor its ``notes``, and its ``display_name`` defaults to its
    ``name``; a ``num_channels`` given without ``flow_autoencoder.num_channels`` sets both."""
    data = dict(data)
    base_name = data.pop(BASE_KEY, None)
    if base_name is None:
        merged = data
    else:
        if not isinstance(base_name, str):
            raise BenchmarkDefinitionError(f"{where}: `{BASE_KEY}` must be a registry name, one of {sorted(BENCHMARKS)}, "
                                           f"got {base_name!r}")
        try:
            base = get_benchmark(base_name)
        except KeyError as error:
            raise BenchmarkDefinitionError(f"{where}: `{BASE_KEY}`: {error.args[0]}") from None
        merged = base.to_dict()
        if data.get("name", base.name) != base.name:
            merged.update(display_name=data["name"], paper_results={}, notes="")
        _check_mapping_values(data, where)
        merged = deep_merge(merged, data)
        if "num_channels" in data and "num_channels" not in (data.get("flow_autoencoder") or {}):
            merged["flow_autoencoder"]["num_channels"] = merged["num_channels"]
    _check_field_types(Benchmark, merged, where)
    try:
        benchmark = Benchmark.from_dict(merged)
    except (TypeError, ValueError) as error:
        raise BenchmarkDefinitionError(f"{where}: {error}" if where != "benchmark" else str(error)) from None
    validate_benchmark(benchmark, where)
    return benchmark


def _check_mapping_values(data: Mapping[str, Any], where: str) -> None:
    """A partial definition's nested sections must be mappings, as the base's are (deep_merge would replace them)."""
    for name, value in data.items():
        if name in _SECTIONS and not isinstance(value, Mapping):
            raise BenchmarkDefinitionError(f"{where}: `{name}` must be a mapping of its fields, got {value!r}")


_SECTIONS = ("flow_autoencoder", "autoencoder_training", "denoiser_training", "evaluation")


def _type_error(annotation: str, value: Any) -> Optional[str]:
    """What is wrong with ``value`` for a field annotated ``annotation`` (this module's postponed annotations),
    or None."""
    if annotation.startswith("Optional["):
        return None if value is None else _type_error(annotation[len("Optional["):-1], value)
    if annotation == "bool":
        return None if isinstance(value, bool) else "true or false"
    if annotation == "int":
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if annotation == "float":
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if annotation == "str":
        return None if isinstance(value, str) else "a string"
    if annotation.startswith("Tuple["):
        item = annotation[len("Tuple["):-1].split(",")[0].strip()
        if not isinstance(value, (list, tuple)) or any(_type_error(item, v) for v in value):
            return f"a list of {'integers' if item == 'int' else 'numbers'}"
        return None
    if annotation.startswith("Dict["):
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            return "a mapping with string keys"
        if annotation == "Dict[str, float]" and any(_type_error("float", v) for v in value.values()):
            return "a mapping of names to numbers"
        return None
    return None


def _check_field_types(cls: type, data: Mapping[str, Any], where: str, prefix: str = "") -> None:
    """Refuse a value whose JSON type does not fit its field, naming the key (``from_dict`` names unknown and
    missing fields)."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    for name, value in data.items():
        annotation = fields.get(name)
        if annotation is None:
            continue
        key = f"{where}: `{prefix}{name}`"
        if annotation in _NESTED_DATACLASSES:
            if not isinstance(value, Mapping):
                raise BenchmarkDefinitionError(f"{key} must be a mapping of {annotation} fields, got {value!r}")
            _check_field_types(_NESTED_DATACLASSES[annotation], value, where, f"{prefix}{name}.")
            continue
        problem = _type_error(annotation, value)
        if problem:
            raise BenchmarkDefinitionError(f"{key} must be {problem}, got {value!r}")


def _at_least(where: str, values: Mapping[str, Any], minimum: float) -> None:
    for key, value in values.items():
        if value < minimum:
            raise BenchmarkDefinitionError(f"{where}: `{key}` must be >= {minimum:g}, got {value}")


def validate_benchmark(benchmark: Benchmark, where: str = "benchmark") -> None:
    """Refuse values no run can use, naming the key and what is allowed: counts below 1, an unknown
    architecture, an evaluation that conditions on another number of frames than the denoiser, a frame size
    the benchmark's autoencoder or denoiser cannot take (``frame_size_problem``), ...; registry entries pass."""
    b, ev, ae, dm = benchmark, benchmark.evaluation, benchmark.autoencoder_training, benchmark.denoiser_training
    if not b.name.strip():
        raise BenchmarkDefinitionError(f"{where}: `name` must be a non-empty string")
    if b.architecture not in ARCHITECTURE_PRESETS:
        raise BenchmarkDefinitionError(f"{where}: `architecture` {b.architecture!r} is unknown; choose one of "
                                       f"{sorted(ARCHITECTURE_PRESETS)} (extdm_diffusers/architectures.py)")
    if b.num_channels not in (1, 3):
        raise BenchmarkDefinitionError(f"{where}: `num_channels` must be 1 or 3, got {b.num_channels}")
    if b.flow_autoencoder.get("num_channels", b.num_channels) != b.num_channels:
        raise BenchmarkDefinitionError(
            f"{where}: `flow_autoencoder.num_channels` ({b.flow_autoencoder['num_channels']}) differs from "
            f"`num_channels` ({b.num_channels}); set `num_channels` only")
    _at_least(where, {"frame_size": b.frame_size, "train_pred_frames": b.train_pred_frames,
                      "evaluation.pred_frames": ev.pred_frames, "evaluation.num_videos": ev.num_videos,
                      "evaluation.video_stride": ev.video_stride, "evaluation.num_samples": ev.num_samples,
                      "evaluation.num_inference_steps": ev.num_inference_steps}, 1)
    # the denoiser needs one observed motion frame beyond the reference unless it includes the reference's
    observed_minimum = 1 if ARCHITECTURE_PRESETS[b.architecture]["include_reference_motion"] else 2
    _at_least(where, {"train_cond_frames": b.train_cond_frames}, observed_minimum)
    if ev.cond_frames != b.train_cond_frames:
        raise BenchmarkDefinitionError(
            f"{where}: `evaluation.cond_frames` ({ev.cond_frames}) must equal `train_cond_frames` "
            f"({b.train_cond_frames}): the denoiser conditions on exactly that many frames")
    _at_least(where, {"evaluation.eta": ev.eta}, 0)
    for section, training in (("autoencoder_training", ae), ("denoiser_training", dm)):
        _at_least(where, {f"{section}.{k}": getattr(training, k) for k in ("batch_size", "num_epochs", "num_repeats")}, 1)
        if not training.learning_rate > 0 or not training.lr_gamma > 0:
            raise BenchmarkDefinitionError(f"{where}: `{section}.learning_rate` and `{section}.lr_gamma` must be > 0, "
                                           f"got {training.learning_rate} and {training.lr_gamma}")
        if list(training.lr_milestones) != sorted(set(training.lr_milestones)) or any(m < 1 for m in training.lr_milestones):
            raise BenchmarkDefinitionError(f"{where}: `{section}.lr_milestones` must be increasing steps >= 1, "
                                           f"got {list(training.lr_milestones)}")
    if not 0 <= ae.min_frame_distance <= ae.max_frame_distance:
        raise BenchmarkDefinitionError(
            f"{where}: `autoencoder_training.min_frame_distance` and `max_frame_distance` need 0 <= min <= max, got "
            f"{ae.min_frame_distance} and {ae.max_frame_distance}")
    if b.frame_width is not None and b.frame_width < b.frame_size:
        raise BenchmarkDefinitionError(f"{where}: `frame_width` ({b.frame_width}) must be >= `frame_size` ({b.frame_size}) "
                                       "or null (square frames)")
    from .models.flow_autoencoder import FlowAutoencoder

    _check_nested_keys(b.flow_autoencoder, FlowAutoencoder.complete_config(), where, "flow_autoencoder.")
    problem = frame_size_problem(b.frame_size, b.flow_autoencoder, b.unet_config()["channel_mults"])
    if problem:
        raise BenchmarkDefinitionError(f"{where}: `frame_size` {b.frame_size}: {problem}")


def _check_nested_keys(config: Mapping[str, Any], defaults: Mapping[str, Any], where: str, prefix: str) -> None:
    """Every key of ``config`` is one of ``defaults`` (recursively) and its value has the default's JSON type."""
    unknown = sorted(set(config) - set(defaults) - {"sample_size"})
    if unknown:
        raise BenchmarkDefinitionError(f"{where}: unknown keys {[prefix + k for k in unknown]}; "
                                       f"`{prefix.rstrip('.')}` takes {sorted(defaults)}")
    for key, value in config.items():
        default = defaults.get(key)
        if isinstance(default, dict):
            if not isinstance(value, Mapping):
                raise BenchmarkDefinitionError(f"{where}: `{prefix}{key}` must be a mapping, got {value!r}")
            _check_nested_keys(value, default, where, f"{prefix}{key}.")
        elif isinstance(default, (bool, int, float, str)):
            problem = _type_error(type(default).__name__, value)
            if problem:
                raise BenchmarkDefinitionError(f"{where}: `{prefix}{key}` must be {problem}, got {value!r}")


def _lcm(values) -> int:
    import math

    result = 1
    for value in values:
        result = result * value // math.gcd(result, value)
    return result


def frame_size_problem(frame_size: int, flow_autoencoder: Mapping[str, Any],
                       unet_channel_mults: Optional[Tuple[int, ...]] = None) -> Optional[str]:
    """Why a ``FlowAutoencoder`` of config ``flow_autoencoder`` (and a U-Net of ``unet_channel_mults`` on its
    motion) cannot take ``frame_size`` x ``frame_size`` frames, or None when it can.

    Every hourglass (region predictor, pixel-wise flow predictor) halves its input ``num_blocks`` times and
    concatenates the skips on the way up, after an anti-aliased downscale by ``scale_factor`` (keeping every
    ``1/scale_factor``-th pixel); the frame generator halves ``num_down_blocks`` times and concatenates its skips;
    the background predictor's encoder halves ``num_blocks`` times down to at least one pixel; the U-Net halves
    the motion (the flow predictor's resolution) ``len(channel_mults) - 1`` times with skips."""
    from .models.flow_autoencoder import FlowAutoencoder

    config = FlowAutoencoder.complete_config(**{k: v for k, v in flow_autoencoder.items() if k != "sample_size"})
    generator = dict(config["generator_params"])
    flow = generator.pop("pixelwise_flow_predictor_params")
    region, background = config["region_predictor_params"], config["bg_predictor_params"]

    def stride(scale: float) -> int:
        return 1 if scale == 1 else int(1 / scale)

    motion_size = -(-frame_size // stride(flow["scale_factor"]))
    levels = len(unet_channel_mults) - 1 if unet_channel_mults is not None else 0
    needs = [  # (what, the size it sees, the multiple that size must be, the frame-size multiple that gives it)
        ("the region predictor", -(-frame_size // stride(region["scale_factor"])), 2 ** region["num_blocks"],
         stride(region["scale_factor"]) * 2 ** region["num_blocks"]),
        ("the pixel-wise flow predictor", motion_size, 2 ** flow["num_blocks"], stride(flow["scale_factor"]) * 2 ** flow["num_blocks"]),
        ("the frame generator", frame_size, 2 ** generator["num_down_blocks"], 2 ** generator["num_down_blocks"]),
        ("the denoiser", motion_size, 2 ** levels, stride(flow["scale_factor"]) * 2 ** levels),
    ]
    works = _lcm(multiple for *_, multiple in needs)
    for what, size, multiple, _ in needs:
        if size % multiple:
            return (f"{what} sees {size}x{size} and needs a multiple of {multiple}; with this benchmark's "
                    f"`flow_autoencoder` (and architecture) frame sizes that work are multiples of {works}")
    if background["bg_type"] != "zero" and frame_size < 2 ** background["num_blocks"]:
        return (f"the background predictor halves {background['num_blocks']} times and needs frames of at least "
                f"{2 ** background['num_blocks']} pixels")
    return None


def pipeline_benchmark(explicit: Optional[BenchmarkSpec], recorded: Optional[Mapping[str, Any]],
                       argument: str = "--benchmark") -> Benchmark:
    """The benchmark a pipeline runs under: ``explicit`` (a name, file or dict) when given, else the one the
    pipeline records (its config's ``benchmark``). An explicit benchmark whose frame size or channels differ from
    the recorded one is an error, as is neither being there."""
    if explicit is None:
        if recorded is None:
            raise BenchmarkDefinitionError(
                f"{argument} is needed: this pipeline records no benchmark (pass a name, one of {sorted(BENCHMARKS)}, "
                "or a benchmark file)")
        return Benchmark.from_dict(recorded)
    try:
        benchmark = load_benchmark(explicit)
    except (KeyError, TypeError) as error:
        raise BenchmarkDefinitionError(f"{argument}: {error.args[0]}") from None
    except BenchmarkDefinitionError as error:
        raise BenchmarkDefinitionError(f"{argument}: {error}") from None
    if recorded is not None:
        own = Benchmark.from_dict(recorded)
        for key in ("frame_size", "num_channels"):
            if getattr(benchmark, key) != getattr(own, key):
                raise BenchmarkDefinitionError(
                    f"{argument} {benchmark.name}: `{key}` is {getattr(benchmark, key)} but the pipeline was made for "
                    f"{getattr(own, key)} ({own.name}); leave {argument} out to use the pipeline's own benchmark")
    return benchmark
