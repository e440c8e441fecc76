"""Video prediction metrics as ExtDM's evaluation computes them.

- :func:`psnr`, :func:`ssim`: per-frame PSNR and SSIM with the original's exact definitions, batched in torch.
- :class:`LPIPS`: per-frame LPIPS (AlexNet, spatial map then mean) through the ``lpips`` package.
- :class:`I3DFeatureExtractor`: 400-d I3D features of StyleGAN-V's TorchScript detector, with the original's
  preprocessing.
- :func:`frechet_distance`: the StyleGAN-V Fréchet distance between two feature sets (FVD on I3D features).

See ``docs/evaluation.md`` ("Metrics") for the definitions and how they match the original code.
"""

from __future__ import annotations

import math
import os
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .file_io import atomic_path

__all__ = ["psnr", "ssim", "LPIPS", "I3DFeatureExtractor", "frechet_distance", "I3D_TORCHSCRIPT_URL"]

# Values this far outside [0, 1] are still accepted: float rounding of a clamped model output
# (e.g. (x + 1) / 2 in float16) can land a hair outside the range.
_RANGE_TOLERANCE = 1e-6


def _check_video(name: str, video: torch.Tensor, min_ndim: int = 4) -> torch.Tensor:
    if isinstance(video, np.ndarray):
        video = torch.from_numpy(video)
    if not isinstance(video, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor or numpy array, got {type(video).__name__}")
    if video.ndim < min_ndim:
        raise ValueError(f"`{name}` must have shape (..., T, C, H, W) (at least {min_ndim} dims), got {tuple(video.shape)}")
    if not video.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor with values in [0, 1], got dtype {video.dtype}")
    if video.numel():
        lo, hi = torch.aminmax(video.detach())
        lo, hi = float(lo), float(hi)  # NaN fails both comparisons below, so test for it explicitly
        if not (lo >= -_RANGE_TOLERANCE and hi <= 1 + _RANGE_TOLERANCE):
            raise ValueError(f"`{name}` must have values in [0, 1], got values in [{lo}, {hi}]")
    return video


def _check_pair(pred: torch.Tensor, target: torch.Tensor, min_ndim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    pred = _check_video("pred", pred, min_ndim)
    target = _check_video("target", target, min_ndim)
    if pred.shape != target.shape:
        raise ValueError(f"`pred` and `target` must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.device != target.device:
        raise ValueError(f"`pred` and `target` must be on the same device, got {pred.device} and {target.device}")
    return pred, target


def _exact_dtype(device: torch.device) -> torch.dtype:
    # The original computes SSIM in float64 (NumPy/OpenCV); MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR of videos ``(..., T, C, H, W)`` with values in [0, 1] -> ``(..., T)``.

    ``20 * log10(1 / sqrt(MSE))`` with the MSE over C, H and W (data range 1), and exactly 100 where
    ``MSE < 1e-10``, as in the original ``img_psnr``. Computed in float64 (float32 on MPS), returned in that dtype.
    """
    pred, target = _check_pair(pred, target)
    dtype = _exact_dtype(pred.device)
    mse = (pred.to(dtype) - target.to(dtype)).square().mean(dim=(-3, -2, -1))
    # clamp only keeps log10 finite where the cap replaces the value anyway
    value = 20 * torch.log10(1 / torch.sqrt(mse.clamp_min(1e-30)))
    return torch.where(mse < 1e-10, torch.full_like(value, 100.0), value)


def _gaussian_1d(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    # cv2.getGaussianKernel(11, 1.5): exp(-(i - 5)^2 / (2 sigma^2)), normalised to sum 1, in float64
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame SSIM of videos ``(..., T, C, H, W)`` with values in [0, 1] -> ``(..., T)``.

    The original's definition (Wang et al. with an 11x11 Gaussian window, sigma 1.5, data range 1:
    C1 = 0.01^2, C2 = 0.03^2): the SSIM map over the "valid" region only (pixels whose window lies inside
    the image, i.e. ``cv2.filter2D(...)[5:-5, 5:-5]``), averaged over pixels, then over channels.
    H and W must be at least 11. Computed in float64 (float32 on MPS), returned in that dtype.
    """
    pred, target = _check_pair(pred, target)
    *lead, t, c, h, w = pred.shape
    if h < 11 or w < 11:
        raise ValueError(f"`pred` frames must be at least 11x11 for SSIM's 11x11 window, got {h}x{w}")
    dtype = _exact_dtype(pred.device)
    x = pred.to(dtype).reshape(-1, 1, h, w)
    y = target.to(dtype).reshape(-1, 1, h, w)
    g = _gaussian_1d(dtype=dtype, device=pred.device)

    # The 2-D window is the outer product of the 1-D kernel, so two 1-D 'valid' convolutions give the same
    # filtered maps as cv2.filter2D followed by the [5:-5, 5:-5] crop (up to float rounding).
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B, 5, H, W)
    stack = F.conv2d(stack, g.view(1, 1, 11, 1).expand(5, 1, 11, 1), groups=5)
    mu_x, mu_y, xx, yy, xy = F.conv2d(stack, g.view(1, 1, 1, 11).expand(5, 1, 1, 11), groups=5).unbind(1)

    c1, c2 = 0.01**2, 0.03**2
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    sigma_x, sigma_y, sigma_xy = xx - mu_xx, yy - mu_yy, xy - mu_xy
    ssim_map = ((2 * mu_xy + c1) * (2 * sigma_xy + c2)) / ((mu_xx + mu_yy + c1) * (sigma_x + sigma_y + c2))
    return ssim_map.mean(dim=(-2, -1)).reshape(*lead, t, c).mean(dim=-1)


# indices of the convolutions in torchvision's `alexnet().features` (the only layers with weights)
_ALEXNET_CONVS = (0, 3, 6, 8, 10)


class LPIPS(torch.nn.Module):
    """Per-frame LPIPS as the original computes it: ``lpips.LPIPS(net='alex', spatial=True)``, then the mean of
    the spatial distance map.

    ``forward(pred, target)`` takes videos ``(..., T, C, H, W)`` with values in [0, 1] (mapped to [-1, 1]
    here; 1-channel frames are repeated to 3 channels) and returns ``(..., T)``.

    The linear calibration layers ship inside the ``lpips`` package. The AlexNet backbone is torchvision's
    ImageNet AlexNet: by default torchvision downloads it (``pretrained_backbone=True``); pass
    ``backbone_weights`` (a local torchvision ``alexnet`` state-dict file) to work offline, or
    ``pretrained_backbone=False`` for a random backbone (tests only: the values then mean nothing).

    ``batch_size`` caps how many frames go through the network at once (``None``: all of them).
    The module always stays in eval mode (``train()`` is a no-op), since the linear layers hold dropout.
    """

    def __init__(
        self, backbone_weights: str | os.PathLike | None = None, pretrained_backbone: bool = True, batch_size: int | None = None
    ):
        super().__init__()
        import lpips

        random_backbone = backbone_weights is not None or not pretrained_backbone
        backbone_state = None if backbone_weights is None else self._read_backbone(backbone_weights)
        with warnings.catch_warnings():
            # lpips still calls torchvision's deprecated `alexnet(pretrained=...)`
            warnings.simplefilter("ignore", UserWarning)
            self.net = lpips.LPIPS(net="alex", spatial=True, pnet_rand=random_backbone, verbose=False)
        if backbone_state is not None:
            # lpips splits torchvision's `features` Sequential into slice1..slice5 but keeps each layer's index,
            # so "slice2.3.weight" is torchvision's "features.3.weight".
            backbone = self.net.net
            backbone.load_state_dict({key: backbone_state["features." + key.split(".", 1)[1]] for key in backbone.state_dict()})
        self.net.requires_grad_(False)
        self.batch_size = batch_size
        self.train(False)

    @staticmethod
    def _read_backbone(path: str | os.PathLike) -> dict[str, torch.Tensor]:
        # read and check the file before building the network, so a wrong file fails fast
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing = [f"features.{i}.{p}" for i in _ALEXNET_CONVS for p in ("weight", "bias") if f"features.{i}.{p}" not in state]
        if missing:
            raise ValueError(f"`backbone_weights` is not a torchvision AlexNet state dict: missing {missing}")
        return state

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = _check_pair(pred, target)
        *lead, t, c, h, w = pred.shape
        if c not in (1, 3):
            raise ValueError(f"`pred` must have 1 or 3 channels, got {c}")
        param = next(self.net.parameters())
        x = pred.reshape(-1, c, h, w).to(param)
        y = target.reshape(-1, c, h, w).to(param)
        if c == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        step = self.batch_size or max(x.shape[0], 1)
        out = [
            self.net(x[i : i + step] * 2 - 1, y[i : i + step] * 2 - 1).mean(dim=(1, 2, 3))
            for i in range(0, x.shape[0], step)
        ]
        return torch.cat(out).reshape(*lead, t) if out else x.new_zeros((*lead, t))


# StyleGAN-V's I3D TorchScript detector (github.com/universome/fvd-comparison), the file the original's
# metrics/fvd.py names (it asks users to download it by hand).
I3D_TORCHSCRIPT_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"


def _download_i3d() -> Path:
    from huggingface_hub import cached_assets_path, constants

    # constants are read at call time so HF_ASSETS_CACHE / HF_HUB_OFFLINE set after import still count
    folder = cached_assets_path("extdm_diffusers", "stylegan-v", "i3d", assets_dir=constants.HF_ASSETS_CACHE)
    target = folder / "i3d_torchscript.pt"
    if target.exists():
        return target
    hint = f"download {I3D_TORCHSCRIPT_URL} by hand and pass its path: I3DFeatureExtractor(path)"
    if constants.HF_HUB_OFFLINE:
        raise RuntimeError(f"The I3D detector is not cached at {target} and HF_HUB_OFFLINE is set; {hint}")
    try:
        # write to a temporary file first so an interrupted download never leaves a truncated detector behind
        with urllib.request.urlopen(I3D_TORCHSCRIPT_URL, timeout=60) as response, atomic_path(target) as tmp:
            with open(tmp, "xb") as f:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
    except OSError as e:
        raise RuntimeError(f"Could not download the I3D detector ({e}); {hint}") from e
    return target


class I3DFeatureExtractor(torch.nn.Module):
    """I3D features for FVD: StyleGAN-V's ``i3d_torchscript.pt``, called as the original ``metrics/fvd.py`` does.

    ``path``: a local copy of the detector; ``None`` downloads it once into the Hugging Face assets cache
    (``huggingface_hub.cached_assets_path``). Move the detector with ``.to(device)``; inputs go to its device.

    Calling it on videos ``(N, T, C, H, W)`` with values in [0, 1] (C = 1 or 3) returns ``(N, 400)`` features
    on the CPU (float32 for the released detector). Each frame is resized bilinearly (``align_corners=False``) so its short side is 224,
    centre-cropped to 224x224 and mapped to [-1, 1]; 1-channel frames are repeated to 3 channels; the
    detector sees ``(N, 3, T, 224, 224)`` with ``rescale=False, resize=False, return_features=True``.
    ``batch_size`` videos go through the detector at once (the original used 10).
    """

    resolution = 224

    def __init__(self, path: str | os.PathLike | None = None):
        super().__init__()
        path = _download_i3d() if path is None else Path(path)
        with warnings.catch_warnings():
            # torch deprecates TorchScript in favour of torch.export, but the detector only exists as TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            self.detector = torch.jit.load(str(path), map_location="cpu").eval()
        self.train(False)

    def train(self, mode: bool = True) -> I3DFeatureExtractor:
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for tensor in (*self.detector.parameters(), *self.detector.buffers()):
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for tensor in self.detector.parameters():
            return tensor.dtype
        return torch.float32

    def preprocess(self, videos: torch.Tensor) -> torch.Tensor:
        """``(N, T, C, H, W)`` in [0, 1] -> the detector's input ``(N, 3, T, 224, 224)`` in [-1, 1]."""
        n, t, c, h, w = videos.shape
        res = self.resolution
        # the original's size rule, in the same float arithmetic (ceil of the long side times 224 / short side)
        scale = res / min(h, w)
        size = (res, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), res)
        frames = F.interpolate(videos.reshape(n * t, c, h, w), size=size, mode="bilinear", align_corners=False)
        top, left = (size[0] - res) // 2, (size[1] - res) // 2
        frames = frames[:, :, top : top + res, left : left + res]
        frames = (frames - 0.5) * 2  # the original's form; 2x - 1 rounds differently
        if c == 1:
            frames = frames.expand(-1, 3, -1, -1)
        return frames.reshape(n, t, 3, res, res).permute(0, 2, 1, 3, 4).contiguous()

    @torch.no_grad()
    def forward(self, videos: torch.Tensor, batch_size: int = 10) -> torch.Tensor:
        videos = _check_video("videos", videos, min_ndim=5)
        if videos.ndim != 5:
            raise ValueError(f"`videos` must have shape (N, T, C, H, W), got {tuple(videos.shape)}")
        if videos.shape[2] not in (1, 3):
            raise ValueError(f"`videos` must have 1 or 3 channels, got {videos.shape[2]}")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be positive, got {batch_size}")
        device, dtype = self.device, self.dtype
        feats = [
            self.detector(
                self.preprocess(videos[i : i + batch_size].to(device=device, dtype=dtype)),
                rescale=False,
                resize=False,
                return_features=True,
            ).cpu()
            for i in range(0, videos.shape[0], batch_size)
        ]
        return torch.cat(feats) if feats else torch.empty(0, 400)


def _as_features(name: str, features) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 1:
        raise ValueError(f"`{name}` must have shape (num_samples, dim) with num_samples >= 1, got {features.shape}")
    return features


def frechet_distance(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(num_samples, dim)`` (FVD on I3D features).

    StyleGAN-V's formula, as the original ``metrics/fvd.py``: ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b))``
    with ``np.cov(rowvar=False)`` (unbiased) covariances, ``scipy.linalg.sqrtm``, and the real part. Computed in
    float64. As in the original, a set of a single sample has no covariance and only the mean term is returned
    (the original checks only its first argument; with one sample in the second it returns NaN).
    """
    from scipy.linalg import sqrtm

    a = _as_features("features_a", features_a)
    b = _as_features("features_b", features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"`features_a` and `features_b` must have the same feature size, got {a.shape[1]} and {b.shape[1]}")
    mean_term = np.square(a.mean(axis=0) - b.mean(axis=0)).sum()
    if a.shape[0] == 1 or b.shape[0] == 1:
        return float(np.real(mean_term))
    sigma_a = np.atleast_2d(np.cov(a, rowvar=False))  # atleast_2d: np.cov of 1-d features is a scalar
    sigma_b = np.atleast_2d(np.cov(b, rowvar=False))
    root = sqrtm(sigma_a @ sigma_b)
    return float(np.real(mean_term + np.trace(sigma_a + sigma_b - root * 2)))
