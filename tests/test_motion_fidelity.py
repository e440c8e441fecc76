"""The motion-fidelity measures against values worked out by hand: squares that move, blur, split into two."""

import pytest
import torch
import torch.nn.functional as F

from extdm_diffusers.evaluation.motion_fidelity import (
    blob_centroid_error,
    blob_centroids,
    centroid_error,
    correction_alignment,
    flow_error_pixels,
    intensity_centroid,
    sharpness,
    sharpness_ratio,
    stroke_pixel_ratio,
    stroke_pixels,
)


def _square(x0: int, y0: int, size: int = 4, frame: int = 16) -> torch.Tensor:
    image = torch.zeros(1, frame, frame, dtype=torch.float64)
    image[:, y0 : y0 + size, x0 : x0 + size] = 1
    return image


def _video(*frames: torch.Tensor) -> torch.Tensor:
    return torch.stack(frames)[None]  # (1, T, 1, H, W)


def test_sharpness_of_a_square_is_its_edge_count_and_blur_lowers_it():
    square = _video(_square(4, 4))
    # a 4x4 square of ones on 16x16: 8 unit steps per row direction: 4 rows x 2 edges each way, over 16 x 15 pairs
    assert sharpness(square).item() == pytest.approx(2 * 8 / (16 * 15))
    blurred = F.avg_pool2d(square[0], 3, stride=1, padding=1, count_include_pad=False)[None]
    assert sharpness(blurred).item() < 0.5 * sharpness(square).item()
    assert sharpness_ratio(blurred, square).item() == pytest.approx(sharpness(blurred).item() / sharpness(square).item())
    assert sharpness(torch.full((2, 3, 1, 8, 8), 0.5)).eq(0).all()
    assert sharpness(torch.zeros(2, 3, 3, 8, 8)).shape == (2, 3)


def test_stroke_pixels_count_the_bright_pixels_and_the_ratio_drops_as_a_digit_shrinks_or_dissolves():
    square = _video(_square(4, 4), _square(4, 4, size=2))
    assert stroke_pixels(square)[0].tolist() == [16.0, 4.0]
    truth = _video(_square(4, 4), _square(4, 4))
    # a shrunken square keeps a quarter of the strokes; a blur that spreads 16 pixels of 1 under 0.5 keeps none
    assert stroke_pixel_ratio(square, truth)[0].tolist() == [1.0, 0.25]
    spread = _video(torch.full((1, 16, 16), 16 / 256, dtype=torch.float64))
    assert stroke_pixel_ratio(spread, _video(_square(4, 4))).item() == 0
    # colour: the mean over the channels is thresholded; a true frame without strokes counts as one pixel
    rgb = torch.zeros(1, 1, 3, 8, 8)
    rgb[..., 0, :2, :2] = 1  # red only: a mean of 1/3, below 0.5
    rgb[..., :, 4:, 4:] = 1
    assert stroke_pixels(rgb).item() == 16
    assert stroke_pixel_ratio(rgb, torch.zeros_like(rgb)).item() == 16
    with pytest.raises(ValueError, match="`threshold` must be in"):
        stroke_pixels(rgb, threshold=1.5)


def test_the_centroid_moves_exactly_with_a_shifted_square():
    video = _video(_square(2, 3), _square(7, 3), _square(7, 9))
    # a 4x4 square at x0..x0+3: its centroid is at x0 + 1.5
    assert torch.allclose(intensity_centroid(video)[0], torch.tensor([[3.5, 4.5], [8.5, 4.5], [8.5, 10.5]], dtype=torch.float64))
    held = _video(*[_square(2, 3)] * 3)
    assert torch.allclose(centroid_error(held, video)[0], torch.tensor([0.0, 5.0, (25 + 36) ** 0.5], dtype=torch.float64))
    black = torch.zeros(1, 1, 1, 16, 16)
    assert torch.equal(intensity_centroid(black)[0, 0], torch.tensor([7.5, 7.5]))


def test_two_blobs_are_found_one_centroid_each_and_paired_either_way():
    two = _square(1, 2) + _square(10, 9)
    centres = blob_centroids(_video(two))[0, 0]
    assert torch.allclose(centres, torch.tensor([[2.5, 3.5], [11.5, 10.5]], dtype=torch.float64), atol=1e-9)
    # both digits move by 2 pixels: each blob's error is 2; the joint centroid's too
    moved = _square(3, 2) + _square(12, 9)
    assert blob_centroid_error(_video(moved), _video(two)).item() == pytest.approx(2.0)
    # one digit moves right by 4, the other left by 4: the joint centroid stays, the blobs see 4 pixels
    apart = _square(5, 2) + _square(6, 9)
    assert centroid_error(_video(apart), _video(two)).item() == pytest.approx(0.0, abs=1e-9)
    assert blob_centroid_error(_video(apart), _video(two)).item() == pytest.approx(4.0)


def test_flow_error_is_in_pixels_of_the_frame():
    grid = torch.zeros(2, 3, 2, 4, 4)
    shifted = grid.clone()
    shifted[:, :, 0] += 0.25  # a quarter of the grid's width of 2: an eighth of a 32-pixel frame
    assert torch.allclose(flow_error_pixels(shifted, grid, (32, 32)), torch.full((2, 3), 4.0))
    shifted[:, :, 1] += 0.5  # 8 px down on a 32x48 (H x W) frame, x: 0.25 * 24 = 6 px: 10 px apart
    assert torch.allclose(flow_error_pixels(shifted, grid, (32, 48)), torch.full((2, 3), 10.0))


def test_correction_alignment_is_the_cosine_of_the_change_made_and_the_change_needed():
    prior = torch.zeros(3, 2, 4, 4, dtype=torch.float64)
    target = prior.clone()
    target[:, 0] = 0.2  # the truth lies to the right of the prior everywhere
    half_way = prior + 0.5 * (target - prior)
    opposite = prior - 0.1 * (target - prior)
    sideways = prior.clone()
    sideways[:, 1] = 0.3  # moved down only: nothing of what was needed
    cosine = correction_alignment(torch.stack([half_way[0], opposite[1], sideways[2]]), prior, target)
    assert torch.allclose(cosine, torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))
    assert correction_alignment(prior, prior, target).eq(0).all()  # no change made: 0, not NaN
    mixed = half_way.clone()
    mixed[:, 1] = 0.1  # half of what was needed, and as much sideways: 45 degrees
    assert torch.allclose(correction_alignment(mixed, prior, target), torch.full((3,), 2 ** -0.5, dtype=torch.float64))


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="`frames` must be a floating-point video tensor"):
        sharpness(torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError, match="`pred` and `truth` must have the same shape"):
        centroid_error(torch.zeros(1, 2, 1, 8, 8), torch.zeros(1, 3, 1, 8, 8))
    with pytest.raises(ValueError, match="`flow` and `target` must be grids"):
        flow_error_pixels(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), (8, 8))
    with pytest.raises(ValueError, match="`refined`, `prior` and `target` must be grids"):
        correction_alignment(torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 5))
