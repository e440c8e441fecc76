"""Whether predicted frames keep the digits' shape and follow their motion: batched measures on videos
(B, T, C, H, W) in [0, 1], one value per video and frame (B, T), beside PSNR and SSIM (which a blurred frame can
win against a sharp one in the wrong place).

- :func:`sharpness`, :func:`sharpness_ratio`: gradient energy, and the prediction's against the truth's (1: as sharp
  as the truth; a prediction dissolving into grey smoke falls towards 0).
- :func:`stroke_pixels`, :func:`stroke_pixel_ratio`: how many pixels are brighter than a threshold (a digit's
  strokes), and the prediction's count against the truth's (1: as much digit as the truth; a digit that shrinks,
  dissolves or merges into another falls below 1, one smeared over the frame's background rises above it).
- :func:`intensity_centroid`, :func:`centroid_error`: where the frame's brightness is, and how far the prediction's
  is from the truth's, in pixels (the digits' joint position).
- :func:`blob_centroids`, :func:`blob_centroid_error`: the same for each of two bright blobs (SMMNIST's two digits),
  by a 2-means on pixel coordinates weighted by intensity.
- :func:`flow_error_pixels`: the distance between two sampling grids in [-1, 1] (the flow autoencoder's motion),
  in pixels of the frame.
"""

from __future__ import annotations

import torch

__all__ = [
    "sharpness", "sharpness_ratio", "stroke_pixels", "stroke_pixel_ratio", "intensity_centroid", "centroid_error",
    "blob_centroids", "blob_centroid_error", "flow_error_pixels",
]


def _check_frames(name: str, frames: torch.Tensor) -> torch.Tensor:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 5 or not frames.is_floating_point():
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"`{name}` must be a floating-point video tensor (B, T, C, H, W) in [0, 1], got {shape}")
    if frames.shape[-1] < 2 or frames.shape[-2] < 2:
        raise ValueError(f"`{name}` frames must be at least 2x2, got {frames.shape[-2]}x{frames.shape[-1]}")
    return frames


def _check_pair(pred: torch.Tensor, truth: torch.Tensor) -> None:
    _check_frames("pred", pred)
    _check_frames("truth", truth)
    if pred.shape != truth.shape:
        raise ValueError(f"`pred` and `truth` must have the same shape, got {tuple(pred.shape)} and {tuple(truth.shape)}")


def sharpness(frames: torch.Tensor) -> torch.Tensor:
    """Gradient energy per frame (B, T): the mean squared horizontal plus the mean squared vertical difference of
    neighbouring pixels, over channels. Blurring a frame lowers it; a constant frame has 0."""
    frames = _check_frames("frames", frames)
    dx = frames[..., :, 1:] - frames[..., :, :-1]
    dy = frames[..., 1:, :] - frames[..., :-1, :]
    return dx.square().mean(dim=(-3, -2, -1)) + dy.square().mean(dim=(-3, -2, -1))


def sharpness_ratio(pred: torch.Tensor, truth: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``sharpness(pred) / sharpness(truth)`` per frame (B, T); ``eps`` keeps a blank true frame finite."""
    _check_pair(pred, truth)
    return sharpness(pred) / sharpness(truth).clamp_min(eps)


def stroke_pixels(frames: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """The number of pixels per frame (B, T) whose mean over the channels is brighter than ``threshold``."""
    frames = _check_frames("frames", frames)
    if not 0 < threshold < 1:
        raise ValueError(f"`threshold` must be in (0, 1), got {threshold}")
    return (frames.mean(dim=2) > threshold).sum(dim=(-2, -1)).to(frames.dtype)


def stroke_pixel_ratio(pred: torch.Tensor, truth: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``stroke_pixels(pred) / stroke_pixels(truth)`` per frame (B, T); a true frame without strokes counts as one
    pixel, so that the ratio stays finite."""
    _check_pair(pred, truth)
    return stroke_pixels(pred, threshold) / stroke_pixels(truth, threshold).clamp_min(1)


def _pixel_grid(frames: torch.Tensor) -> torch.Tensor:
    """(H, W, 2) pixel coordinates (x, y) of the pixel centres, 0 at the top-left pixel."""
    h, w = frames.shape[-2:]
    y, x = torch.meshgrid(torch.arange(h, dtype=frames.dtype, device=frames.device),
                          torch.arange(w, dtype=frames.dtype, device=frames.device), indexing="ij")
    return torch.stack([x, y], dim=-1)


def intensity_centroid(frames: torch.Tensor) -> torch.Tensor:
    """The intensity-weighted mean pixel position (x, y) of each frame (B, T, 2), in pixels from the top-left
    pixel's centre, over the channels' mean; a black frame's centroid is the frame's centre."""
    frames = _check_frames("frames", frames)
    weights = frames.mean(dim=2)  # (B, T, H, W)
    grid = _pixel_grid(frames)
    total = weights.sum(dim=(-2, -1))
    centroid = torch.einsum("bthw,hwk->btk", weights, grid) / total.clamp_min(torch.finfo(frames.dtype).tiny)[..., None]
    centre = grid.reshape(-1, 2).mean(dim=0)
    return torch.where((total > 0)[..., None], centroid, centre)


def centroid_error(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The distance in pixels between the intensity centroids of ``pred`` and ``truth`` per frame (B, T)."""
    _check_pair(pred, truth)
    return (intensity_centroid(pred) - intensity_centroid(truth)).norm(dim=-1)


def blob_centroids(frames: torch.Tensor, num_iterations: int = 10) -> torch.Tensor:
    """The centroids (x, y) in pixels of two bright blobs per frame (B, T, 2, 2): a 2-means on the pixel
    coordinates, each weighted by its intensity, started from the intensity centroid moved one standard deviation
    either way along the principal axis. For two separated digits it finds one centroid per digit; where the
    digits overlap the two split the joint blob. A cluster left without weight keeps its previous centre."""
    frames = _check_frames("frames", frames)
    weights = frames.mean(dim=2).flatten(-2)  # (B, T, N)
    points = _pixel_grid(frames).reshape(-1, 2)  # (N, 2)
    tiny = torch.finfo(frames.dtype).tiny
    centroid = intensity_centroid(frames)  # (B, T, 2)
    offsets = points - centroid[..., None, :]  # (B, T, N, 2)
    covariance = torch.einsum("btn,btni,btnj->btij", weights, offsets, offsets)
    covariance = covariance / weights.sum(-1).clamp_min(tiny)[..., None, None]
    variances, axes = torch.linalg.eigh(covariance)  # ascending: the last axis is the principal one
    step = axes[..., :, -1] * variances[..., -1:].clamp_min(0).sqrt()
    centres = torch.stack([centroid - step, centroid + step], dim=-2)  # (B, T, 2, 2)
    for _ in range(num_iterations):
        distances = torch.cdist(points.expand(*centres.shape[:2], -1, -1), centres)  # (B, T, N, 2)
        assignment = torch.nn.functional.one_hot(distances.argmin(-1), 2).to(frames.dtype) * weights[..., None]
        mass = assignment.sum(dim=-2)  # (B, T, 2)
        updated = torch.einsum("btnk,ni->btki", assignment, points) / mass.clamp_min(tiny)[..., None]
        centres = torch.where((mass > 0)[..., None], updated, centres)
    # a fixed order (by x, then y) so that two runs on the same frame agree
    order = (centres[..., 0] * (frames.shape[-1] + frames.shape[-2]) + centres[..., 1]).argsort(dim=-1)
    return centres.gather(-2, order[..., None].expand(-1, -1, -1, 2))


def blob_centroid_error(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The mean distance in pixels between the two blob centroids of ``pred`` and of ``truth`` per frame (B, T),
    under the pairing of the blobs that makes it smaller."""
    _check_pair(pred, truth)
    p, t = blob_centroids(pred), blob_centroids(truth)
    same = (p - t).norm(dim=-1).mean(dim=-1)
    swapped = (p - t.flip(-2)).norm(dim=-1).mean(dim=-1)
    return torch.minimum(same, swapped)


def flow_error_pixels(flow: torch.Tensor, target: torch.Tensor, frame_size: tuple) -> torch.Tensor:
    """The mean end-point distance in pixels between two sampling grids ``flow`` and ``target`` (..., 2, h, w),
    x and y in [-1, 1] over the whole frame (``grid_sample``'s convention, ``align_corners=False``): a grid
    difference of 2 is the frame's width (x) or height (y) in pixels; ``frame_size`` is (H, W) of the frames.
    Returns (...), the mean over the h x w motion positions."""
    if flow.shape != target.shape or flow.ndim < 3 or flow.shape[-3] != 2:
        raise ValueError(f"`flow` and `target` must be grids (..., 2, h, w) of one shape, got {tuple(flow.shape)} "
                         f"and {tuple(target.shape)}")
    height, width = frame_size
    scale = torch.tensor([width / 2, height / 2], dtype=flow.dtype, device=flow.device).view(2, 1, 1)
    return ((flow - target) * scale).norm(dim=-3).mean(dim=(-2, -1))


def correction_alignment(refined: torch.Tensor, prior: torch.Tensor, target: torch.Tensor,
                         eps: float = 1e-12) -> torch.Tensor:
    """How well a refinement of ``prior`` points where ``target`` needs it: the cosine between what the refinement
    changed (``refined - prior``) and what was needed (``target - prior``), over all the flow's elements of one
    (..., 2, h, w) grid. 1: the change points exactly where the target lies (whatever its size); 0: unrelated (a
    change that is noise); -1: the opposite way; 0 where either change is zero. Returns (...)."""
    if not refined.shape == prior.shape == target.shape or refined.ndim < 3 or refined.shape[-3] != 2:
        raise ValueError(f"`refined`, `prior` and `target` must be grids (..., 2, h, w) of one shape, got "
                         f"{tuple(refined.shape)}, {tuple(prior.shape)} and {tuple(target.shape)}")
    applied, needed = (refined - prior).flatten(-3), (target - prior).flatten(-3)
    norms = applied.norm(dim=-1) * needed.norm(dim=-1)
    return torch.where(norms > eps, (applied * needed).sum(dim=-1) / norms.clamp_min(eps), torch.zeros_like(norms))
