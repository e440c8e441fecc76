"""Training losses of the motion autoencoder (the original LFAE/MRAA ``ReconstructionModel``).

The original objective is ``perceptual + equivariance_shift + equivariance_affine``:

- ``perceptual``: the prediction and the driving frame go through an image pyramid (anti-aliased
  downsampling), each level through a frozen ImageNet VGG19; per level and VGG layer, the L1 mean between the
  features (those of the driving frame detached), weighted (10 each) and summed.
- ``equivariance_shift`` / ``equivariance_affine``: the driving frame is warped by a random affine + thin-plate
  spline transform T; the regions found in the warped frame, mapped back through T, must match the regions
  of the driving frame (centres, and affine shapes via the Jacobian of T).

VGG19 ImageNet weights are downloaded by torchvision on first use. Offline, pass a local torchvision
``vgg19`` state dict (``vgg_weights=path``) or train with ``perceptual_loss="none"`` (an L1 pixel pyramid).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..benchmarks import AutoencoderTraining
from ..models.autoencoder_blocks import AntiAliasDownsample2d, inverse_2x2, make_coordinate_grid

# The original's config/AE/*.yaml ``train_params``: the registry's ``AutoencoderTraining`` defaults.
_ORIGINAL = {f.name: f.default for f in dataclasses.fields(AutoencoderTraining) if f.default is not dataclasses.MISSING}
DEFAULT_SCALES = _ORIGINAL["pyramid_scales"]  # Cityscapes adds 0.125
DEFAULT_PERCEPTUAL_WEIGHTS = _ORIGINAL["perceptual_weights"]
DEFAULT_EQUIVARIANCE_SHIFT_WEIGHT = _ORIGINAL["equivariance_shift_weight"]
DEFAULT_EQUIVARIANCE_AFFINE_WEIGHT = _ORIGINAL["equivariance_affine_weight"]
DEFAULT_SIGMA_AFFINE = _ORIGINAL["sigma_affine"]
DEFAULT_SIGMA_TPS = _ORIGINAL["sigma_tps"]
DEFAULT_POINTS_TPS = _ORIGINAL["points_tps"]
# With ``perceptual_loss="none"``: the weight of each pyramid level's pixel L1 (no counterpart in the original;
# 10 is the weight the original gives each perceptual term).
DEFAULT_PIXEL_WEIGHT = 10.0

PERCEPTUAL_LOSSES = ("vgg19", "none")

# torchvision's vgg19 ``features`` up to relu5_1: (out channels or "M" for a max-pool) per conv block.
_VGG19_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
# Ends of the slices relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (indices into ``features``).
VGG19_SLICE_ENDS = (2, 7, 12, 21, 30)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImagePyramid(nn.Module):
    """Band-limited copies of an image at several ``scales`` (1 = the image itself).

    Each level is a Gaussian blur (sigma = (1/s - 1)/2, kernel 2*round(4 sigma) + 1) followed by taking every
    (1/s)-th pixel, the original ``AntiAliasInterpolation2d``; ``1/s`` must therefore be an integer.
    """

    def __init__(self, scales: Sequence[float], num_channels: int):
        super().__init__()
        scales = tuple(float(s) for s in scales)
        if not scales:
            raise ValueError("`scales` must name at least one scale")
        for s in scales:
            if not 0 < s <= 1 or abs(1 / s - round(1 / s)) > 1e-6:
                raise ValueError(f"`scales` must be 1/n for integers n >= 1, got {s}")
        if len(set(scales)) != len(scales):
            raise ValueError(f"`scales` must not repeat, got {scales}")
        self.scales = scales
        self.levels = nn.ModuleList(AntiAliasDownsample2d(num_channels, s) for s in scales)

    def forward(self, image: torch.Tensor) -> List[torch.Tensor]:
        """One (B, C, H*s, W*s) tensor per scale, in the order of ``scales``."""
        return [level(image) for level in self.levels]


def _vgg19_features() -> nn.Sequential:
    """torchvision's ``vgg19().features[:30]`` with the same layer indices, without building the classifier
    (500 MB of parameters that the loss never uses)."""
    layers: List[nn.Module] = []
    in_channels = 3
    for spec in _VGG19_LAYERS:
        if spec == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = nn.Conv2d(in_channels, spec, kernel_size=3, padding=1)
            # torchvision's initialisation, so that weights=None behaves like an untrained vgg19
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            in_channels = spec
    return nn.Sequential(*layers)


def _features_state_dict(state_dict: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
    """The entries of a torchvision ``vgg19`` state dict that ``features[:30]`` needs, renamed to ours."""
    if isinstance(state_dict, dict) and "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    out = {}
    for key, value in state_dict.items():
        if not key.startswith("features."):
            continue
        index = int(key.split(".")[1])
        if index < VGG19_SLICE_ENDS[-1]:
            out[key[len("features."):]] = value
    if not out:
        raise ValueError(f"`weights`: {source} holds no `features.*` entries of a torchvision vgg19 state dict")
    return out


class VGG19PerceptualFeatures(nn.Module):
    """Frozen VGG19 activations relu1_1 ... relu5_1 of ImageNet-normalised images in [0, 1].

    Args:
        weights: ``"imagenet"``: torchvision's ImageNet weights (downloaded on first use, as in the original);
            a path: a local torchvision ``vgg19`` state dict (``torch.save(vgg19(...).state_dict(), path)``; only
            ``features.*`` is read); ``None``: random initialisation (tests only: the loss then means little).
    """

    def __init__(self, weights: Union[str, os.PathLike, None] = "imagenet"):
        super().__init__()
        self.features = _vgg19_features()
        if weights is None:
            pass
        elif isinstance(weights, str) and weights == "imagenet":
            from torchvision.models import VGG19_Weights, vgg19

            self.features.load_state_dict(_features_state_dict(vgg19(weights=VGG19_Weights.IMAGENET1K_V1).state_dict(), "torchvision"))
        elif isinstance(weights, (str, os.PathLike)):
            if not os.path.isfile(weights):
                raise FileNotFoundError(f"`weights`: no VGG19 state dict at {os.fspath(weights)!r} (or pass 'imagenet' or None)")
            state_dict = torch.load(weights, map_location="cpu", weights_only=True)
            self.features.load_state_dict(_features_state_dict(state_dict, repr(os.fspath(weights))))
        else:
            raise ValueError(f"`weights` must be 'imagenet', a path to a vgg19 state dict or None, got {weights!r}")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def forward(self, image: torch.Tensor) -> List[torch.Tensor]:
        """Five activations of ``image`` (B, 3 or 1, H, W) in [0, 1]; grayscale is repeated to 3 channels."""
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        elif image.shape[1] != 3:
            raise ValueError(f"VGG19 takes 1 or 3 channels, got an image of shape {tuple(image.shape)}")
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        out, start = [], 0
        for end in VGG19_SLICE_ENDS:
            for layer in self.features[start:end]:
                x = layer(x)
            out.append(x)
            start = end
        return out


@dataclass
class EquivarianceTransform:
    """A random warp of the plane for the equivariance losses: affine plus thin-plate spline.

    x -> theta[:, :, :2] x + theta[:, :, 2] + (sum_k p_k phi(|x - c_k|_1)) * (1, 1), phi(r) = r^2 log(r + 1e-6),
    with control points c_k on a regular grid in [-1, 1]^2. As in the original, r is the L1 distance and the spline
    term is added to x and y alike.

    theta: (B, 2, 3). control_params: (B, 1, K) or None (affine only). control_points: (K, 2) (x, y).
    """

    theta: torch.Tensor
    control_params: Optional[torch.Tensor] = None
    control_points: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.theta.ndim != 3 or self.theta.shape[1:] != (2, 3):
            raise ValueError(f"`theta` must have shape (B, 2, 3), got {tuple(self.theta.shape)}")
        if (self.control_params is None) != (self.control_points is None):
            raise ValueError("`control_params` and `control_points` must be given together")
        if self.control_params is not None:
            k = self.control_points.shape[0]
            if self.control_points.shape != (k, 2) or self.control_params.shape != (self.theta.shape[0], 1, k):
                raise ValueError(
                    f"`control_points` must have shape (K, 2) and `control_params` (B, 1, K) with B={self.theta.shape[0]}, "
                    f"got {tuple(self.control_points.shape)} and {tuple(self.control_params.shape)}"
                )

    @classmethod
    def sample(
        cls,
        batch_size: int,
        sigma_affine: float = DEFAULT_SIGMA_AFFINE,
        sigma_tps: Optional[float] = DEFAULT_SIGMA_TPS,
        points_tps: int = DEFAULT_POINTS_TPS,
        generator: Optional[torch.Generator] = None,
        device: Union[str, torch.device, None] = None,
        dtype: torch.dtype = torch.float32,
    ) -> "EquivarianceTransform":
        """theta = I + N(0, sigma_affine^2), spline parameters N(0, sigma_tps^2) on a points_tps x points_tps grid
        (``sigma_tps=None``: affine only). Draws on the CPU when ``generator`` is a CPU generator."""
        gen_device = generator.device if generator is not None else device
        theta = sigma_affine * torch.randn(batch_size, 2, 3, generator=generator, device=gen_device, dtype=dtype)
        theta = (theta + torch.eye(2, 3, dtype=dtype, device=gen_device)).to(device)
        if sigma_tps is None:
            return cls(theta)
        params = sigma_tps * torch.randn(batch_size, 1, points_tps**2, generator=generator, device=gen_device, dtype=dtype)
        points = make_coordinate_grid(points_tps, points_tps, device=device, dtype=dtype).reshape(-1, 2)
        return cls(theta, params.to(device), points)

    @classmethod
    def identity(cls, batch_size: int, points_tps: int = DEFAULT_POINTS_TPS, device=None, dtype=torch.float32):
        """The transform with zero noise: maps every point to itself."""
        theta = torch.eye(2, 3, device=device, dtype=dtype).expand(batch_size, 2, 3).clone()
        points = make_coordinate_grid(points_tps, points_tps, device=device, dtype=dtype).reshape(-1, 2)
        return cls(theta, torch.zeros(batch_size, 1, points_tps**2, device=device, dtype=dtype), points)

    def _spline_terms(self, coordinates: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """L1 distances r (b, N, K) to the control points and the signs of the offsets (b, N, K, 2)."""
        offsets = coordinates.unsqueeze(-2) - self.control_points.to(coordinates)  # (b, N, K, 2)
        return offsets.abs().sum(-1), torch.sign(offsets)

    def warp_coordinates(self, coordinates: torch.Tensor) -> torch.Tensor:
        """T(coordinates): (B or 1, N, 2) points (x, y) -> (B, N, 2)."""
        theta = self.theta.to(coordinates)
        warped = coordinates @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]
        if self.control_params is not None:
            r, _ = self._spline_terms(coordinates)
            spline = (r**2 * torch.log(r + 1e-6) * self.control_params.to(coordinates)).sum(-1, keepdim=True)
            warped = warped + spline  # the same offset for x and y, as the original
        return warped

    def jacobian(self, coordinates: torch.Tensor) -> torch.Tensor:
        """dT/dx at ``coordinates`` (B or 1, N, 2): (B, N, 2, 2), rows = output (x, y).

        Closed form of what the original gets from autograd (so it also works under ``torch.no_grad``); it is
        itself differentiable in ``coordinates``, as the original's ``create_graph=True``.
        """
        theta = self.theta.to(coordinates)
        n = coordinates.shape[1]
        jac = theta[:, None, :, :2].expand(theta.shape[0], n, 2, 2)
        if self.control_params is not None:
            r, sign = self._spline_terms(coordinates)
            dphi = 2 * r * torch.log(r + 1e-6) + r**2 / (r + 1e-6)  # d/dr of r^2 log(r + 1e-6)
            grad = ((dphi * self.control_params.to(coordinates)).unsqueeze(-1) * sign).sum(-2)  # (B, N, 2)
            jac = jac + grad.unsqueeze(-2)  # the spline adds the same gradient to both output rows
        return jac

    def warp_image(self, image: torch.Tensor) -> torch.Tensor:
        """Sample ``image`` (B, C, H, W) at T(grid): reflection padding, ``align_corners=False`` (the original,
        which relied on the torch 1.13 default). The grid runs from -1 to 1 at the corner pixels' centres while
        ``align_corners=False`` puts -1 at their outer edges, so even the identity transform shrinks the image by
        one pixel overall (blurring it slightly); the original trained that way."""
        b, _, h, w = image.shape
        grid = make_coordinate_grid(h, w, device=image.device, dtype=image.dtype).reshape(1, h * w, 2)
        grid = self.warp_coordinates(grid).reshape(b, h, w, 2)
        return F.grid_sample(image, grid, padding_mode="reflection", align_corners=False)


# the original's name (``Transform``) for drawing one
random_transform = EquivarianceTransform.sample


class FlowAutoencoderLoss(nn.Module):
    """The original autoencoder training loss, for a ``FlowAutoencoder`` and a (source, driving) batch.

    Args:
        num_channels: image channels (of the pyramid's blur kernels).
        scales: image pyramid scales: (1, .5, .25) in the original configs, (1, .5, .25, .125) for Cityscapes.
        perceptual_loss: ``"vgg19"`` (the original) or ``"none"``: an L1 loss between the pyramids' pixels
            instead, ``pixel_weight`` per level (for machines without VGG weights; not the paper's objective).
        perceptual_weights: one weight per VGG layer (relu1_1 ... relu5_1); the original's 10 each.
        vgg_weights: ``weights`` of ``VGG19PerceptualFeatures``, or a built ``VGG19PerceptualFeatures`` (ignored
            with ``perceptual_loss="none"``).
        pixel_weight: weight of each pyramid level's pixel L1 with ``perceptual_loss="none"``.
        equivariance_shift_weight, equivariance_affine_weight: 0 switches a term off (the original's 10 each).
        sigma_affine, sigma_tps, points_tps: the random transform (``transform_params``).

    ``forward`` returns a dict: each weighted term (``perceptual`` or ``pixel``, ``equivariance_shift``,
    ``equivariance_affine``) and their sum ``loss``.
    """

    def __init__(
        self,
        num_channels: int = 3,
        scales: Sequence[float] = DEFAULT_SCALES,
        perceptual_loss: str = "vgg19",
        perceptual_weights: Sequence[float] = DEFAULT_PERCEPTUAL_WEIGHTS,
        vgg_weights: Union[str, os.PathLike, None, VGG19PerceptualFeatures] = "imagenet",
        pixel_weight: float = DEFAULT_PIXEL_WEIGHT,
        equivariance_shift_weight: float = DEFAULT_EQUIVARIANCE_SHIFT_WEIGHT,
        equivariance_affine_weight: float = DEFAULT_EQUIVARIANCE_AFFINE_WEIGHT,
        sigma_affine: float = DEFAULT_SIGMA_AFFINE,
        sigma_tps: Optional[float] = DEFAULT_SIGMA_TPS,
        points_tps: int = DEFAULT_POINTS_TPS,
    ):
        super().__init__()
        if perceptual_loss not in PERCEPTUAL_LOSSES:
            raise ValueError(f"`perceptual_loss` must be one of {PERCEPTUAL_LOSSES}, got {perceptual_loss!r}")
        if len(perceptual_weights) != len(VGG19_SLICE_ENDS):
            raise ValueError(f"`perceptual_weights` must hold {len(VGG19_SLICE_ENDS)} weights (relu1_1 ... relu5_1), got {list(perceptual_weights)}")
        self.num_channels = num_channels
        self.pyramid = ImagePyramid(scales, num_channels)
        self.perceptual_loss = perceptual_loss
        self.perceptual_weights = tuple(float(w) for w in perceptual_weights)
        self.pixel_weight = float(pixel_weight)
        # The original builds VGG only when some perceptual weight is non-zero.
        use_vgg = perceptual_loss == "vgg19" and any(self.perceptual_weights)
        if not use_vgg:
            self.vgg = None
        elif isinstance(vgg_weights, VGG19PerceptualFeatures):
            self.vgg = vgg_weights  # already built (e.g. shared between several losses)
        else:
            self.vgg = VGG19PerceptualFeatures(vgg_weights)
        self.equivariance_shift_weight = float(equivariance_shift_weight)
        self.equivariance_affine_weight = float(equivariance_affine_weight)
        self.sigma_affine = sigma_affine
        self.sigma_tps = sigma_tps
        self.points_tps = points_tps

    @property
    def scales(self) -> Tuple[float, ...]:
        return self.pyramid.scales

    def sample_transform(self, batch_size: int, generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32) -> EquivarianceTransform:
        """A random transform with this loss's ``sigma_affine``, ``sigma_tps`` and ``points_tps``."""
        return EquivarianceTransform.sample(batch_size, self.sigma_affine, self.sigma_tps, self.points_tps, generator, device, dtype)

    def reconstruction_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted pyramid loss between ``prediction`` and ``target`` (VGG features or pixels)."""
        total = prediction.new_zeros(())
        for predicted, real in zip(self.pyramid(prediction), self.pyramid(target)):
            if self.perceptual_loss == "none":
                total = total + self.pixel_weight * (predicted - real.detach()).abs().mean()
                continue
            for weight, x, y in zip(self.perceptual_weights, self.vgg(predicted), self.vgg(real)):
                total = total + weight * (x - y.detach()).abs().mean()
        return total

    def forward(
        self,
        autoencoder: nn.Module,
        source: torch.Tensor,
        driving: torch.Tensor,
        transform: Optional[EquivarianceTransform] = None,
        generator: Optional[torch.Generator] = None,
        return_output: bool = False,
    ):
        """Losses for reconstructing ``driving`` (B, C, H, W) from ``source`` with ``autoencoder`` (a
        ``FlowAutoencoder``; train it in train mode, as the original: batch norm then uses batch statistics).

        ``transform``: the equivariance warp (default: drawn with ``generator``). ``return_output``: also return
        the autoencoder's ``FlowAutoencoderOutput`` (for logging), as ``(losses, output)``.
        """
        if transform is not None and transform.theta.shape[0] != driving.shape[0]:
            raise ValueError(f"`transform` is for batch size {transform.theta.shape[0]}, `driving` has {driving.shape[0]}")
        equivariance = bool(self.equivariance_shift_weight or self.equivariance_affine_weight)
        if equivariance:
            if transform is None:
                transform = self.sample_transform(driving.shape[0], generator, driving.device, driving.dtype)
            # the three region predictions of the original's step (source, driving, transformed driving) in one
            # pass, each batch still normalised by its own statistics
            *regions, transformed_regions = autoencoder.predict_regions(source, driving, transform.warp_image(driving))
            output = autoencoder(source, driving, region_params=tuple(regions))
        else:
            output = autoencoder(source, driving)
        losses: Dict[str, torch.Tensor] = {}
        if self.perceptual_loss == "none":
            losses["pixel"] = self.reconstruction_loss(output.prediction, driving)
        elif self.vgg is not None:
            losses["perceptual"] = self.reconstruction_loss(output.prediction, driving)

        if equivariance:
            driving_regions = output.driving_region_params
            if self.equivariance_shift_weight:
                mapped_back = transform.warp_coordinates(transformed_regions.shift)
                losses["equivariance_shift"] = self.equivariance_shift_weight * (driving_regions.shift - mapped_back).abs().mean()
            if self.equivariance_affine_weight:
                if driving_regions.affine is None or transformed_regions.affine is None:
                    raise ValueError("`equivariance_affine_weight` needs an autoencoder that estimates region affines "
                                     "(`estimate_affine=True`); set the weight to 0 otherwise")
                mapped_affine = transform.jacobian(transformed_regions.shift) @ transformed_regions.affine
                value = inverse_2x2(driving_regions.affine) @ mapped_affine
                if autoencoder.pixelwise_flow_predictor.revert_axis_swap:
                    # The PCA square root's sign is arbitrary; the flow predictor fixes it the same way.
                    value = value * torch.sign(value[:, :, 0:1, 0:1])
                eye = torch.eye(2, device=value.device, dtype=value.dtype)
                losses["equivariance_affine"] = self.equivariance_affine_weight * (eye - value).abs().mean()

        losses["loss"] = sum(losses.values()) if losses else source.new_zeros(())
        return (losses, output) if return_output else losses


__all__ = [
    "ImagePyramid",
    "VGG19PerceptualFeatures",
    "EquivarianceTransform",
    "random_transform",
    "FlowAutoencoderLoss",
    "PERCEPTUAL_LOSSES",
    "VGG19_SLICE_ENDS",
]
