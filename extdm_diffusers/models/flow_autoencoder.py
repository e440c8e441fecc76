"""FlowAutoencoder: ExtDM's motion autoencoder (LFAE, after MRAA/LFDM) as a diffusers model.

Every frame is represented as a warp of a reference frame: a flow grid (x, y in [-1, 1]) and an
occlusion map, both at the pixel-wise flow predictor's resolution. ``encode`` computes that motion for
all frames of a clip in one batched call, ``decode`` turns motion back into frames.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput, logging

from ..config_utils import deep_merge
from .autoencoder_blocks import batch_norm_per_call, normalises_per_call
from .background_motion_predictor import BackgroundMotionPredictor
from .frame_generator import FrameGenerator
from .offload_hooks import apply_offload_hooks
from .pixelwise_flow_predictor import PixelwiseFlowPredictor
from .region_predictor import RegionParams, RegionPredictor

logger = logging.get_logger(__name__)

# The original SMMNIST/BAIR configuration (config/AE/*.yaml, flow_params.model_params); the benchmark registry
# reads it through `FlowAutoencoder.complete_config`.
DEFAULT_BG_PREDICTOR_PARAMS = {"block_expansion": 32, "max_features": 1024, "num_blocks": 5, "bg_type": "affine"}
DEFAULT_REGION_PREDICTOR_PARAMS = {
    "temperature": 0.1,
    "block_expansion": 32,
    "max_features": 1024,
    "scale_factor": 0.5,
    "num_blocks": 5,
    "pca_based": True,
    "pad": 0,
    "fast_svd": False,
}
DEFAULT_GENERATOR_PARAMS = {
    "block_expansion": 64,
    "max_features": 512,
    "num_down_blocks": 2,
    "num_bottleneck_blocks": 6,
    "skips": True,
    "pixelwise_flow_predictor_params": {
        "block_expansion": 64,
        "max_features": 1024,
        "num_blocks": 5,
        "scale_factor": 0.5,
        "use_deformed_source": True,
        "use_covar_heatmap": True,
        "estimate_occlusion_map": True,
    },
}


@dataclass
class FlowAutoencoderOutput(BaseOutput):
    """Reconstruction of ``driving`` from ``source``.

    prediction: (B, C, H, W) generated frame. deformed: (B, C, H, W) source warped by the flow alone.
    optical_flow: (B, 2, h, w) sampling grid (x, y in [-1, 1]). occlusion_map: (B, 1, h, w) in [0, 1] or None.
    features: (B, F, h', w') bottleneck features of the source. source_region_params / driving_region_params:
    ``RegionParams``. background_params: (B, 3, 3) background transform.
    """

    prediction: torch.Tensor = None
    deformed: torch.Tensor = None
    optical_flow: torch.Tensor = None
    occlusion_map: Optional[torch.Tensor] = None
    features: torch.Tensor = None
    source_region_params: RegionParams = None
    driving_region_params: RegionParams = None
    background_params: torch.Tensor = None


@dataclass
class FlowAutoencoderEncoderOutput(BaseOutput):
    """Motion of every frame relative to the reference.

    optical_flow: (B, T, 2, h, w). occlusion_map: (B, T, 1, h, w) or None. features: (B, T, F, h', w')
    bottleneck features of each frame (of the first ``feature_frames`` only where ``encode`` was given it).
    region_params: ``RegionParams`` of every frame, batched over (B·T) frames, video by video (``encode``; what
    ``extrapolate`` continues); ``extrapolate`` leaves it out.
    """

    optical_flow: torch.Tensor = None
    occlusion_map: Optional[torch.Tensor] = None
    features: torch.Tensor = None
    region_params: Optional[RegionParams] = None


@dataclass
class FlowAutoencoderDecoderOutput(BaseOutput):
    """sample: frames in [0, 1], (B, C, H, W) or (B, T, C, H, W) like the motion given. deformed: the source
    warped by the flow alone, same shape."""

    sample: torch.Tensor = None
    deformed: torch.Tensor = None


@contextlib.contextmanager
def _running_stats_frozen(module: torch.nn.Module, frozen: bool) -> Iterator[None]:
    """With ``frozen``, the batch norms in ``module`` normalise with the batch's statistics (as in training) but
    leave their running statistics and batch counts as they were. Momentum 0 rather than
    ``track_running_stats=False``, so that the recomputation saves the same tensors as the forward."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats] if frozen else []
    saved = [(norm.momentum, norm.num_batches_tracked.clone()) for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, (momentum, count) in zip(norms, saved):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(count)


def _reflect_into_frame(shift: torch.Tensor, covar: torch.Tensor, extent: float) -> torch.Tensor:
    """Centres (B, T, K, 2) folded back into [-limit, limit] per axis, limit = 1 − extent · the region's standard
    deviation (covariances (B, K, 2, 2)), as a point bouncing between two walls: a mirror at each wall."""
    std = torch.diagonal(covar, dim1=-2, dim2=-1).clamp_min(0).sqrt()
    limit = (1 - extent * std).clamp_min(0.05)[:, None]  # a region wider than the frame still keeps a range
    span = 2 * limit
    folded = torch.remainder(shift + limit, 2 * span)
    return torch.where(folded > span, 2 * span - folded, folded) - limit


def compose_motion(outer_flow: torch.Tensor, outer_occlusion: Optional[torch.Tensor], inner_flow: torch.Tensor,
                   inner_occlusion: Optional[torch.Tensor]):
    """The motion of two warps in one: ``outer_flow`` (B, 2, h, w) warps a frame A into a frame B, ``inner_flow``
    (B, T, 2, h, w) warps B into T frames; the result (B, T, 2, h, w) warps A into those frames directly (a pixel of
    frame t samples A where B's pixel it samples sampled A). Occlusion maps (B, 1, h, w) and (B, T, 1, h, w) in
    [0, 1] multiply: a pixel is visible where it is in both. Decoding the composition from A interpolates A once,
    where decoding the inner flow from a decoded B would blur B's blur again. Either occlusion may be None (visible)."""
    if outer_flow.ndim != 4 or outer_flow.shape[1] != 2 or inner_flow.ndim != 5 or inner_flow.shape[2] != 2 \
            or inner_flow.shape[0] != outer_flow.shape[0] or inner_flow.shape[-2:] != outer_flow.shape[-2:]:
        raise ValueError(f"`outer_flow` must have shape (B, 2, h, w) and `inner_flow` (B, T, 2, h, w) of the same B, h "
                         f"and w, got {tuple(outer_flow.shape)} and {tuple(inner_flow.shape)}")
    b, t = inner_flow.shape[:2]
    grid = inner_flow.flatten(0, 1).permute(0, 2, 3, 1)

    def sample(field: torch.Tensor) -> torch.Tensor:
        # border: a grid point on the frame's edge (inner grids stay in [-1, 1]) reads the edge, not zeros
        return F.grid_sample(field.repeat_interleave(t, dim=0), grid, align_corners=False, padding_mode="border")

    flow = sample(outer_flow).unflatten(0, (b, t))
    if outer_occlusion is None:
        return flow, inner_occlusion
    occlusion = sample(outer_occlusion).unflatten(0, (b, t))
    return flow, occlusion if inner_occlusion is None else occlusion * inner_occlusion


class FlowAutoencoder(ModelMixin, ConfigMixin):
    """The motion autoencoder. Config fields mirror the original YAML's ``flow_params.model_params``:
    nested ``*_params`` dicts are merged over the defaults above, so a partial dict is enough.
    ``sample_size``: the frame size it was trained on (``dataset_params.frame_shape``), checked by the pipeline."""

    _supports_gradient_checkpointing = True
    # what device_map="auto" keeps on one device: the four networks, whose outputs are all the others read
    _no_split_modules = ["RegionPredictor", "BackgroundMotionPredictor", "FrameGenerator", "PixelwiseFlowPredictor"]

    @register_to_config
    def __init__(
        self,
        num_regions: int = 10,
        num_channels: int = 3,
        estimate_affine: bool = True,
        revert_axis_swap: bool = True,
        bg_predictor_params: Optional[Dict[str, Any]] = None,
        region_predictor_params: Optional[Dict[str, Any]] = None,
        generator_params: Optional[Dict[str, Any]] = None,
        sample_size: Optional[int] = None,
    ):
        super().__init__()
        bg_params = deep_merge(DEFAULT_BG_PREDICTOR_PARAMS, bg_predictor_params)
        region_params = deep_merge(DEFAULT_REGION_PREDICTOR_PARAMS, region_predictor_params)
        generator_params = deep_merge(DEFAULT_GENERATOR_PARAMS, generator_params)
        # Register the resolved parameters, not the partial ones given: the saved config then describes the
        # architecture completely, whatever the defaults in code become.
        self.register_to_config(
            bg_predictor_params=copy.deepcopy(bg_params),
            region_predictor_params=copy.deepcopy(region_params),
            generator_params=copy.deepcopy(generator_params),
        )
        flow_params = generator_params.pop("pixelwise_flow_predictor_params")
        if region_params.pop("fast_svd", False):
            logger.info("`fast_svd` is ignored: the batched 2x2 SVD runs with torch.linalg.svd, which computes the same.")

        self.region_predictor = RegionPredictor(
            num_regions=num_regions, num_channels=num_channels, estimate_affine=estimate_affine, **region_params
        )
        self.bg_predictor = BackgroundMotionPredictor(num_channels=num_channels, **bg_params)
        self.generator = FrameGenerator(num_channels=num_channels, **generator_params)
        self.pixelwise_flow_predictor = PixelwiseFlowPredictor(
            num_regions=num_regions, num_channels=num_channels, revert_axis_swap=revert_axis_swap, **flow_params
        )
        self.gradient_checkpointing = False
        self.motion_scale_factor = float(flow_params.get("scale_factor", 1.0))
        self.feature_scale_factor = 1.0 / 2 ** generator_params["num_down_blocks"]

    @classmethod
    def complete_config(cls, **overrides: Any) -> Dict[str, Any]:
        """Every constructor argument but ``sample_size``, the defaults with ``overrides`` deep-merged over them:
        the original YAML's complete ``flow_params.model_params``."""
        parameters = inspect.signature(cls.__init__).parameters
        config = {name: p.default for name, p in parameters.items() if name not in ("self", "sample_size")}
        config.update(bg_predictor_params=DEFAULT_BG_PREDICTOR_PARAMS, region_predictor_params=DEFAULT_REGION_PREDICTOR_PARAMS,
                      generator_params=DEFAULT_GENERATOR_PARAMS)
        unknown = sorted(set(overrides) - set(config))
        if unknown:
            raise TypeError(f"unknown FlowAutoencoder arguments {unknown}")
        return deep_merge(config, overrides)

    @property
    def feature_channels(self) -> int:
        """Channels of the bottleneck features (``features`` of ``encode``)."""
        return self.generator.feature_channels

    @property
    def estimates_occlusion(self) -> bool:
        return self.pixelwise_flow_predictor.occlusion is not None

    @staticmethod
    def config_estimates_occlusion(generator_params: Optional[Dict[str, Any]]) -> bool:
        """``estimates_occlusion`` of an autoencoder built with ``generator_params`` (a saved config's, or partial),
        without building it: merged over the defaults as ``__init__`` merges them."""
        merged = deep_merge(DEFAULT_GENERATOR_PARAMS, generator_params)
        return bool(merged["pixelwise_flow_predictor_params"]["estimate_occlusion_map"])

    # -- input checks --------------------------------------------------------------------------------------
    def _check_image(self, name: str, image: torch.Tensor, ndim: int) -> None:
        layout = "(B, C, H, W)" if ndim == 4 else "(B, T, C, H, W)"
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor of shape {layout}, got {type(image).__name__}")
        c = self.config.num_channels
        if image.ndim != ndim or image.shape[-3] != c:
            raise ValueError(f"`{name}` must have shape {layout} with C={c}, got {tuple(image.shape)}")

    @staticmethod
    def _check_same(what: str, **values) -> None:
        """Raise naming the arguments unless all ``values`` (one per argument) are equal. Compared, not hashed: a
        set would fix torch.compile's symbolic sizes to the first call's (a recompilation for every frame size)."""
        first, *others = values.values()
        if any(other != first for other in others):
            raise ValueError(f"{what} of {', '.join(f'`{n}`' for n in values)} must match, got {values}")

    def _run(self, network, *args):
        """``network(*args)``; under gradient checkpointing its activations are recomputed in the backward pass
        instead of kept (each of the four networks, and the generator's encoder and decoder, is one unit)."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            calls = []

            def run(*inputs):
                # the backward pass runs the forward again: batch norm must not count that batch a second time
                with _running_stats_frozen(getattr(network, "__self__", network), frozen=bool(calls)):
                    calls.append(True)
                    return network(*inputs)

            return self._gradient_checkpointing_func(run, *args)
        return network(*args)

    def _regions_of_parts(self, images: torch.Tensor, parts: int) -> RegionParams:
        with batch_norm_per_call(self.region_predictor, parts):
            return self.region_predictor(images)

    def _predict_regions(self, images) -> Tuple[RegionParams, ...]:
        if len(images) == 1 or (self.training and not normalises_per_call(self.region_predictor)):
            # (in train mode only separate calls keep each batch's statistics where the norms cannot split)
            return tuple(self._run(self.region_predictor, image) for image in images)
        return self._run(self._regions_of_parts, torch.cat(images), len(images)).chunk(len(images))

    # -- public API ----------------------------------------------------------------------------------------
    @apply_offload_hooks
    def predict_regions(self, *images: torch.Tensor) -> Tuple[RegionParams, ...]:
        """The region parameters of each of ``images`` (each (B, C, H, W), all the same shape), from one pass of
        the region predictor over all of them. In train mode each image batch is normalised by its own batch
        statistics and the running statistics are updated image after image, as separate calls would (bit for
        bit); the training loss predicts the source's, the driving frame's and its transformed copy's so."""
        if not images:
            raise ValueError("`images`: give at least one (B, C, H, W) batch")
        for i, image in enumerate(images):
            self._check_image(f"images[{i}]", image, 4)
        self._check_same("shape", **{f"images[{i}]": tuple(image.shape) for i, image in enumerate(images)})
        return self._predict_regions(images)

    def forward(self, source: torch.Tensor, driving: torch.Tensor, return_dict: bool = True,
                region_params: Optional[Tuple[RegionParams, RegionParams]] = None):
        """Reconstruct ``driving`` (B, C, H, W) as a warp of ``source`` (B, C, H, W), images in [0, 1].
        ``region_params``: the source's and the driving frame's ``RegionParams`` where already predicted (by
        ``predict_regions`` together with other images); by default predicted here, in one pass."""
        self._check_image("source", source, 4)
        self._check_image("driving", driving, 4)
        self._check_same("batch size", source=source.shape[0], driving=driving.shape[0])
        self._check_same("frame size", source=tuple(source.shape[-2:]), driving=tuple(driving.shape[-2:]))

        if region_params is None:
            source_regions, driving_regions = self._predict_regions((source, driving))
        elif len(region_params) != 2 or not all(isinstance(r, RegionParams) for r in region_params):
            raise TypeError("`region_params` must be (source's, driving's) RegionParams, as `predict_regions(source, driving)` gives")
        else:
            source_regions, driving_regions = region_params
        background = self._run(self.bg_predictor, source, driving)
        motion = self._run(self.pixelwise_flow_predictor, source, driving_regions, source_regions, background)
        flow_grid, occlusion = motion.optical_flow, motion.occlusion_map
        source_features = self._run(self.generator.encode, source)
        prediction, deformed = self._run(self.generator.decode, source, source_features, flow_grid, occlusion)
        output = FlowAutoencoderOutput(
            prediction=prediction,
            deformed=deformed,
            optical_flow=flow_grid.permute(0, 3, 1, 2),
            occlusion_map=occlusion,
            features=source_features[-1],
            source_region_params=source_regions,
            driving_region_params=driving_regions,
            background_params=background,
        )
        return output if return_dict else output.to_tuple()

    @apply_offload_hooks
    def encode(self, frames: torch.Tensor, reference: torch.Tensor, return_dict: bool = True,
               feature_frames: Optional[int] = None):
        """Motion of every frame of ``frames`` (B, T, C, H, W) relative to ``reference`` (B, C, H, W), and the
        bottleneck features of every frame: all frames go through the networks as one batch.
        ``feature_frames``: features of the first that many frames only (a training clip's observed frames: the
        denoiser reads no features of the future ones); ``None``: of all T."""
        self._check_image("frames", frames, 5)
        self._check_image("reference", reference, 4)
        self._check_same("batch size", frames=frames.shape[0], reference=reference.shape[0])
        self._check_same("frame size", frames=tuple(frames.shape[-2:]), reference=tuple(reference.shape[-2:]))
        b, t = frames.shape[:2]
        if feature_frames is None:
            feature_frames = t
        elif isinstance(feature_frames, bool) or not isinstance(feature_frames, int) or not 1 <= feature_frames <= t:
            raise ValueError(f"`feature_frames` must be an int in [1, {t}] (the frames given) or None, got {feature_frames!r}")
        flat = frames.reshape(b * t, *frames.shape[2:])

        source_regions = self._run(self.region_predictor, reference).repeat_interleave(t)
        driving_regions = self._run(self.region_predictor, flat)
        background = self._run(self.bg_predictor, reference.repeat_interleave(t, dim=0), flat)
        motion = self._run(self.pixelwise_flow_predictor, reference, driving_regions, source_regions, background, t)
        flow = motion.optical_flow.permute(0, 3, 1, 2)
        occlusion = motion.occlusion_map
        with_features = flat if feature_frames == t else frames[:, :feature_frames].reshape(-1, *frames.shape[2:])
        features = self._run(self.generator.encode, with_features)[-1]
        output = FlowAutoencoderEncoderOutput(
            optical_flow=flow.reshape(b, t, *flow.shape[1:]),
            occlusion_map=None if occlusion is None else occlusion.reshape(b, t, *occlusion.shape[1:]),
            features=features.reshape(b, feature_frames, *features.shape[1:]),
            region_params=driving_regions,
        )
        return output if return_dict else output.to_tuple()

    @apply_offload_hooks
    def extrapolate(self, reference: torch.Tensor, previous_regions: RegionParams, reference_regions: RegionParams,
                    num_frames: int, reflect_extent: Optional[float] = None, return_dict: bool = True):
        """The motion of ``num_frames`` frames after ``reference`` (B, C, H, W) in which every region keeps moving
        as it moved from the frame before: region centres at constant velocity, region shapes and the background
        as the reference's. ``previous_regions``, ``reference_regions``: ``RegionParams`` (B, K, ...) of the frame
        before the reference and of the reference (``encode``'s ``region_params``). Returns the motion relative to
        ``reference`` as ``encode`` does (``optical_flow`` (B, num_frames, 2, h, w), ``occlusion_map``), without
        features: the constant-velocity guess a denoiser can refine (``ExtDMUNet3DModel(motion_prior=...)``).
        ``reflect_extent`` e: a centre bounces off the frame's edges, mirrored where it comes within e standard
        deviations of its region (its covariance, per axis) of an edge, as objects bouncing inside the frame do;
        ``None``: centres move on unbounded."""
        self._check_image("reference", reference, 4)
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"`num_frames` must be a positive int, got {num_frames!r}")
        b = reference.shape[0]
        for name, regions in (("previous_regions", previous_regions), ("reference_regions", reference_regions)):
            if not isinstance(regions, RegionParams) or regions.shift is None or regions.shift.shape[0] != b:
                raise ValueError(f"`{name}` must be RegionParams of the {b} reference frames")
        steps = torch.arange(1, num_frames + 1, device=reference.device, dtype=reference_regions.shift.dtype)
        velocity = reference_regions.shift - previous_regions.shift
        shift = reference_regions.shift[:, None] + steps.view(1, -1, 1, 1) * velocity[:, None]  # (B, T, K, 2)
        if reflect_extent is not None:
            shift = _reflect_into_frame(shift, reference_regions.covar, reflect_extent)
        source = reference_regions.repeat_interleave(num_frames)
        driving = RegionParams(**{**source, "shift": shift.flatten(0, 1)})
        # the background as the autoencoder encodes the reference relative to itself: its own "no camera motion"
        background = self._run(self.bg_predictor, reference, reference).repeat_interleave(num_frames, dim=0)
        motion = self._run(self.pixelwise_flow_predictor, reference, driving, source, background, num_frames)
        flow = motion.optical_flow.permute(0, 3, 1, 2)
        occlusion = motion.occlusion_map
        output = FlowAutoencoderEncoderOutput(
            optical_flow=flow.reshape(b, num_frames, *flow.shape[1:]),
            occlusion_map=None if occlusion is None else occlusion.reshape(b, num_frames, *occlusion.shape[1:]),
        )
        return output if return_dict else output.to_tuple()

    @apply_offload_hooks
    def decode(
        self,
        source: torch.Tensor,
        optical_flow: torch.Tensor,
        occlusion_map: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ):
        """Frames from motion: ``source`` (B, C, H, W) warped by ``optical_flow`` (B, 2, h, w) or (B, T, 2, h, w),
        blended with ``occlusion_map`` (B, [T,] 1, h, w) in [0, 1]. The source is encoded once for all T frames
        (the original ``forward_with_flow``, batched). Without ``occlusion_map`` every level is a plain warp and
        the frame is the warped source, as the original evaluates KTH and BAIR."""
        self._check_image("source", source, 4)
        if not isinstance(optical_flow, torch.Tensor) or optical_flow.ndim not in (4, 5) or optical_flow.shape[-3] != 2:
            shape = tuple(optical_flow.shape) if isinstance(optical_flow, torch.Tensor) else type(optical_flow).__name__
            raise ValueError(f"`optical_flow` must have shape (B, 2, h, w) or (B, T, 2, h, w), got {shape}")
        per_frame = optical_flow.ndim == 5
        if occlusion_map is not None and (
            occlusion_map.ndim != optical_flow.ndim
            or occlusion_map.shape[-3] != 1
            or occlusion_map.shape[:-3] != optical_flow.shape[:-3]
            or occlusion_map.shape[-2:] != optical_flow.shape[-2:]
        ):
            raise ValueError(
                f"`occlusion_map` must have shape {tuple(optical_flow.shape[:-3]) + (1,) + tuple(optical_flow.shape[-2:])} "
                f"to match `optical_flow`, got {tuple(occlusion_map.shape)}"
            )
        self._check_same("batch size", source=source.shape[0], optical_flow=optical_flow.shape[0])

        t = optical_flow.shape[1] if per_frame else 1
        flow = optical_flow.reshape(-1, *optical_flow.shape[-3:]).permute(0, 2, 3, 1)
        occlusion = None if occlusion_map is None else occlusion_map.reshape(-1, *occlusion_map.shape[-3:])
        features = [f.repeat_interleave(t, dim=0) for f in self._run(self.generator.encode, source)]
        sample, deformed = self._run(self.generator.decode, source.repeat_interleave(t, dim=0), features, flow, occlusion)
        if per_frame:
            sample = sample.reshape(source.shape[0], t, *sample.shape[1:])
            deformed = deformed.reshape(source.shape[0], t, *deformed.shape[1:])
        output = FlowAutoencoderDecoderOutput(sample=sample, deformed=deformed)
        return output if return_dict else output.to_tuple()
