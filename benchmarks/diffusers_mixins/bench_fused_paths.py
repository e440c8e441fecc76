"""The U-Net's fused paths, now inside their modules' ``forward`` (where diffusers' and accelerate's hooks see
them), against the plain module calls they replace, timed interleaved in one process (median of rounds), float32
on the CPU, at the released width (64 channels) and motion size (32x32), 10 frames, batch 2.

    OMP_NUM_THREADS=2 python benchmarks/diffusers_mixins/bench_fused_paths.py
"""

import statistics
import time

import torch
from torch import nn

from extdm_diffusers.models.unet_blocks import FrameConv3d, ScaleShiftGroupNorm


def timed(fn, repeats: int = 20) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main(rounds: int = 7) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 64, 10, 32, 32).contiguous(memory_format=torch.channels_last_3d)
    fused_conv = FrameConv3d(64, 64, (1, 3, 3), padding=(0, 1, 1))
    plain_conv = nn.Conv3d(64, 64, (1, 3, 3), padding=(0, 1, 1))
    plain_conv.load_state_dict(fused_conv.state_dict())
    norm = ScaleShiftGroupNorm(8, 64)
    plain_norm = nn.GroupNorm(8, 64)
    scale, shift = torch.randn(2, 64, 1, 1, 1), torch.randn(2, 64, 1, 1, 1)
    cases = {
        "(1,3,3) conv: FrameConv3d (one Conv2d over frames)": lambda: fused_conv(x),
        "(1,3,3) conv: nn.Conv3d": lambda: plain_conv(x),
        "time-modulated norm: ScaleShiftGroupNorm (folded)": lambda: norm(x, scale, shift),
        "time-modulated norm: nn.GroupNorm, then * (scale + 1) + shift": lambda: plain_norm(x) * (scale + 1) + shift,
    }
    torch.testing.assert_close(fused_conv(x), plain_conv(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm(x, scale, shift), plain_norm(x) * (scale + 1) + shift, rtol=1e-4, atol=1e-5)
    times = {name: [] for name in cases}
    with torch.no_grad():
        for fn in cases.values():
            timed(fn, 3)  # warm-up
        for _ in range(rounds):
            for name, fn in cases.items():
                times[name].append(timed(fn))
    for name, values in times.items():
        print(f"{name:70s} {statistics.median(values) * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
