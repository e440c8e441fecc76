"""extdm_diffusers.metrics against the original ExtDM metric functions (stored outputs), lpips and scipy."""

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from extdm_diffusers.metrics import LPIPS, I3DFeatureExtractor, frechet_distance, psnr, ssim

FIXTURE = Path(__file__).parent / "fixtures" / "metrics_reference.safetensors"
CASES = ["rgb", "gray", "rgb_nonsquare"]


@pytest.fixture(scope="module")
def reference():
    return load_file(FIXTURE)


# --- PSNR / SSIM: the original's per-frame values (tests/fixtures/README.md, "Metrics") --------------------------


@pytest.mark.parametrize("case", CASES)
def test_psnr_matches_original(reference, case):
    out = psnr(reference[f"{case}.pred"], reference[f"{case}.target"])
    expected = reference[f"{case}.psnr"]
    assert out.shape == expected.shape
    # the original's MSE is a float32 mean; ours is float64: ~3e-8 relative apart
    torch.testing.assert_close(out, expected, rtol=1e-7, atol=0)


def test_psnr_cap_rule(reference):
    out = psnr(reference["rgb.pred"], reference["rgb.target"])
    assert out[0, 0] == 100 and out[0, 1] == 100  # MSE 0 and MSE < 1e-10
    assert 90 < out[1, 2] < 100  # MSE just above 1e-10 is not capped


@pytest.mark.parametrize("case", CASES)
def test_ssim_matches_original(reference, case):
    out = ssim(reference[f"{case}.pred"], reference[f"{case}.target"])
    expected = reference[f"{case}.ssim"]
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_psnr_ssim_leading_dims_and_dtypes(reference):
    pred, target = reference["rgb.pred"], reference["rgb.target"]
    flat = psnr(pred.flatten(0, 1), target.flatten(0, 1))  # (T, C, H, W) -> (T,)
    torch.testing.assert_close(flat, psnr(pred, target).flatten())
    extra = ssim(pred[None], target[None])  # (1, N, T, C, H, W) -> (1, N, T)
    torch.testing.assert_close(extra[0], ssim(pred, target))
    from_double = ssim(pred.double(), target.double())
    torch.testing.assert_close(from_double, ssim(pred, target))
    assert torch.all(ssim(pred, pred) == 1)


# --- LPIPS ----------------------------------------------------------------------------------------------------


def _lpips_per_frame(reference_net, pred, target):
    """What the original does: one frame at a time, gray repeated to 3 channels, [0, 1] -> [-1, 1], spatial mean."""
    *lead, t, c, h, w = pred.shape
    p, g = pred.reshape(-1, c, h, w), target.reshape(-1, c, h, w)
    if c == 1:
        p, g = p.repeat(1, 3, 1, 1), g.repeat(1, 3, 1, 1)
    out = [reference_net(p[i : i + 1] * 2 - 1, g[i : i + 1] * 2 - 1).mean() for i in range(p.shape[0])]
    return torch.stack(out).reshape(*lead, t)


@pytest.fixture(scope="module")
def random_lpips():
    torch.manual_seed(0)
    return LPIPS(pretrained_backbone=False)


@pytest.fixture(scope="module")
def reference_lpips(random_lpips):
    """lpips.LPIPS itself, as the original builds it, with the same (random) weights."""
    import lpips

    with warnings.catch_warnings():  # lpips calls torchvision's deprecated alexnet(pretrained=...)
        warnings.simplefilter("ignore", UserWarning)
        net = lpips.LPIPS(net="alex", spatial=True, pnet_rand=True, verbose=False)
    net.load_state_dict(random_lpips.net.state_dict())
    return net


@pytest.mark.parametrize("shape", [(1, 3, 3, 32, 32), (1, 2, 1, 32, 40)])
def test_lpips_matches_lpips_package_per_frame(random_lpips, reference_lpips, shape):
    pred, target = torch.rand(shape), torch.rand(shape)
    with torch.no_grad():
        out = random_lpips(pred, target)
        expected = _lpips_per_frame(reference_lpips, pred, target)
    assert out.shape == shape[:-3]
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert torch.all(random_lpips(pred, pred) == 0)


def test_lpips_batch_size_and_eval_mode(random_lpips):
    pred, target = torch.rand(1, 3, 3, 32, 32), torch.rand(1, 3, 3, 32, 32)
    full = random_lpips(pred, target)
    random_lpips.batch_size = 2
    try:
        torch.testing.assert_close(random_lpips(pred, target), full, rtol=1e-6, atol=1e-6)
    finally:
        random_lpips.batch_size = None
    random_lpips.train()  # dropout in the linear layers must stay off
    assert not random_lpips.training and not random_lpips.net.training
    torch.testing.assert_close(random_lpips(pred, target), full)


def test_lpips_backbone_weights_file(random_lpips, tmp_path):
    # a torchvision-style AlexNet `features.*` state dict (random_lpips's backbone, renamed)
    backbone = random_lpips.net.net.state_dict()
    features = {"features." + k.split(".", 1)[1]: v + 1 for k, v in backbone.items()}
    torch.save(features, tmp_path / "alexnet.pth")
    metric = LPIPS(backbone_weights=tmp_path / "alexnet.pth")
    loaded = metric.net.net.state_dict()
    assert loaded.keys() == backbone.keys()
    assert all(torch.equal(loaded[k], backbone[k] + 1) for k in backbone)
    torch.save({"classifier.1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="`backbone_weights` is not a torchvision AlexNet state dict"):
        LPIPS(backbone_weights=tmp_path / "bad.pth")


# --- I3D features ---------------------------------------------------------------------------------------------


class _FakeI3D(torch.nn.Module):
    """The StyleGAN-V detector's call signature; the features record what it was given."""

    def __init__(self):
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1))

    def forward(self, x: torch.Tensor, rescale: bool, resize: bool, return_features: bool) -> torch.Tensor:
        n, c, t, h, w = x.shape
        out = torch.zeros(n, 400, dtype=x.dtype)
        out[:, 0] = float(c)
        out[:, 1] = float(t)
        out[:, 2] = float(h)
        out[:, 3] = float(w)
        out[:, 4] = float(rescale)
        out[:, 5] = float(resize)
        out[:, 6] = float(return_features)
        out[:, 7] = x.flatten(1).amin(1)
        out[:, 8] = x.flatten(1).amax(1)
        out[:, 9:12] = x.mean(dim=(2, 3, 4))
        out[:, 12:400] = x[:, :, 0, 100, :].flatten(1)[:, :388]  # 3 x 224 pixels of row 100, frame 0
        return out + self.anchor


@pytest.fixture(scope="module")
def fake_i3d(tmp_path_factory):
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated, but the real detector is a TorchScript file
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_FakeI3D()), str(path))
    return I3DFeatureExtractor(path)


def _original_preprocess(video):
    """The original fvd.preprocess_single, restated: video (C, T, H, W) in [0, 1]."""
    c, t, h, w = video.shape
    scale = 224 / min(h, w)
    size = (224, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), 224)
    video = F.interpolate(video, size=size, mode="bilinear", align_corners=False)
    top, left = (video.shape[2] - 224) // 2, (video.shape[3] - 224) // 2
    return (video[:, :, top : top + 224, left : left + 224] - 0.5) * 2


@pytest.mark.parametrize("shape", [(3, 4, 3, 64, 64), (2, 3, 3, 64, 85), (2, 3, 1, 85, 64)])
def test_i3d_preprocessing(fake_i3d, shape):
    videos = torch.rand(shape)
    x = fake_i3d.preprocess(videos)
    assert x.shape == (shape[0], 3, shape[1], 224, 224)
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.5 and x.max() > 0.5
    for n in range(shape[0]):
        rgb = videos[n].expand(-1, 3, -1, -1) if shape[2] == 1 else videos[n]  # the original repeats gray to RGB
        torch.testing.assert_close(x[n], _original_preprocess(rgb.permute(1, 0, 2, 3)), rtol=1e-6, atol=1e-6)

    feats = fake_i3d(videos)
    assert feats.shape == (shape[0], 400) and feats.dtype == torch.float32
    assert feats[:, :7].tolist() == [[3, shape[1], 224, 224, 0, 0, 1]] * shape[0]
    torch.testing.assert_close(feats[:, 7], x.flatten(1).amin(1))
    torch.testing.assert_close(feats[:, 12:], x[:, :, 0, 100, :].flatten(1)[:, :388])
    if shape[2] == 1:
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])


def test_i3d_batching_matches_unbatched(fake_i3d):
    videos = torch.rand(5, 3, 3, 32, 40)
    one_by_one = torch.cat([fake_i3d(v[None], batch_size=1) for v in videos])
    torch.testing.assert_close(fake_i3d(videos, batch_size=2), one_by_one, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fake_i3d(videos, batch_size=10), one_by_one, rtol=1e-6, atol=1e-6)


def test_i3d_download_offline_error(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_ASSETS_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE.*I3DFeatureExtractor\\(path\\)"):
        I3DFeatureExtractor()


def test_i3d_download_is_atomic_and_readable_by_the_team(monkeypatch, tmp_path):
    import io
    import os
    import stat
    import urllib.request

    from huggingface_hub import constants

    from extdm_diffusers import metrics

    monkeypatch.setattr(constants, "HF_ASSETS_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    payload = b"detector" * 1000
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    path = metrics._download_i3d()
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_bytes() == payload and stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["i3d_torchscript.pt"]  # no temporary left

    class Cut(io.BytesIO):  # a connection that drops half way
        def read(self, size=-1):
            raise OSError("connection reset")

    path.unlink()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Cut())
    with pytest.raises(RuntimeError, match="connection reset"):
        metrics._download_i3d()
    assert list(path.parent.iterdir()) == []


# --- Fréchet distance -----------------------------------------------------------------------------------------


def _scipy_frechet(a, b):
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(np.real(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * scipy.linalg.sqrtm(s_a @ s_b))))


def test_frechet_distance_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 16))
    b = rng.standard_normal((80, 16)) * 1.3 + 0.2
    expected = _scipy_frechet(a, b)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(expected, rel=1e-5)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-8)  # tr sqrtm(AB) = tr sqrtm(BA)


def test_frechet_distance_known_cases():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((100, 8))
    assert abs(frechet_distance(a, a)) < 1e-6
    m = rng.standard_normal(8)
    assert frechet_distance(a, a + m) == pytest.approx(float((m**2).sum()), rel=1e-6)
    assert frechet_distance(a[:1], a[1:]) == pytest.approx(float(((a[0] - a[1:].mean(0)) ** 2).sum()))


# --- errors ---------------------------------------------------------------------------------------------------


def test_errors_name_the_argument():
    x = torch.rand(2, 3, 3, 16, 16)
    for metric in (psnr, ssim):
        with pytest.raises(ValueError, match="`pred` and `target` must have the same shape"):
            metric(x, x[:, :2])
        with pytest.raises(ValueError, match="`pred` must have shape"):
            metric(x[0, 0], x[0, 0])
        with pytest.raises(ValueError, match="`target` must have values in \\[0, 1\\]"):
            metric(x, x * 2)
        with pytest.raises(ValueError, match="`target` must have values in \\[0, 1\\]"):
            metric(x, torch.full_like(x, float("nan")))
        with pytest.raises(ValueError, match="`pred` must be a floating-point"):
            metric((x * 255).to(torch.uint8), x)
    psnr(x, (x + 1e-7).clamp_max(1 + 1e-7))  # float rounding just outside [0, 1] is tolerated
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x[..., :10, :], x[..., :10, :])
    with pytest.raises(ValueError, match="`features_a` and `features_b` must have the same feature size"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="`features_b` must have shape"):
        frechet_distance(np.zeros((4, 3)), np.zeros(3))


def test_i3d_and_lpips_errors(fake_i3d, random_lpips):
    with pytest.raises(ValueError, match="`videos` must have shape \\(N, T, C, H, W\\)"):
        fake_i3d(torch.rand(1, 2, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="`videos` must have 1 or 3 channels"):
        fake_i3d(torch.rand(1, 2, 2, 32, 32))
    with pytest.raises(ValueError, match="`pred` and `target` must have the same shape"):
        random_lpips(torch.rand(1, 2, 3, 32, 32), torch.rand(1, 3, 3, 32, 32))
