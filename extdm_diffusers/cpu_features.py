"""What the CPU computes fast in bf16. torch's oneDNN convolutions take bf16 only on CPUs with AVX-512 (natively with
AVX512-BF16 or AMX); elsewhere every bf16 convolution falls back to torch's reference kernels (im2col and a plain
matrix product), and a prediction in bf16 is an order of magnitude slower than in float32 (docs/performance.md)."""

from __future__ import annotations

import logging
import platform
import re
from pathlib import Path
from typing import Any, Dict, Optional, Set, Tuple

import torch

logger = logging.getLogger(__name__)


def _cpuinfo() -> Tuple[str, Set[str]]:
    """(model name, flags) from /proc/cpuinfo; (platform.processor(), no flags) where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        return (re.search(r"^model name\s*:\s*(.+)$", text, re.M).group(1),
                set(re.search(r"^flags\s*:\s*(.+)$", text, re.M).group(1).split()))
    except (OSError, AttributeError):
        return platform.processor(), set()


def onednn_bf16() -> bool:
    """Whether torch's oneDNN runs bf16 convolutions and matrix products on this CPU, as torch itself decides."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:  # a torch built without oneDNN
            return False
    return {"avx512bw", "avx512vl", "avx512dq"} <= _cpuinfo()[1]


def native_cpu_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX tiles), as torch itself detects it."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(probe is None for probe in probes):  # an older torch: read the flags
        return bool({"avx512_bf16", "amx_bf16"} & _cpuinfo()[1])
    return any(probe() for probe in probes if probe is not None)


def cpu_description() -> Dict[str, Any]:
    """The CPU model and the vector flags that decide bf16 speed (AVX-512, AMX), as every speed figure needs them."""
    model, flags = _cpuinfo()
    return {"model": model, "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "onednn_bf16": onednn_bf16(), "native_bf16": native_cpu_bf16(), "torch_threads": torch.get_num_threads()}


def warn_if_slow_cpu_bf16(device: torch.device, dtype: Optional[torch.dtype], autocast: Optional[torch.dtype] = None,
                          what: str = "--dtype") -> bool:
    """Log a warning (and return True) where bf16 is asked for on a CPU whose oneDNN has no bf16 kernels."""
    if torch.bfloat16 not in (dtype, autocast) or torch.device(device).type != "cpu" or onednn_bf16():
        return False
    logger.warning(f"{what} bfloat16 on a CPU without AVX-512 ({_cpuinfo()[0]}): torch's oneDNN has no bf16 kernels "
                   "here and its convolutions fall back to reference kernels, an order of magnitude slower than "
                   "float32 (docs/performance.md); bf16 saves only memory on this CPU")
    return True
