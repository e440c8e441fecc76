"""bf16 on the CPU: oneDNN's bf16 kernels and bf16 arithmetic detected from torch's own probes, and a warning where
bf16 would fall back to torch's slow reference kernels."""

import logging

import pytest
import torch

from extdm_diffusers import cpu_features


@pytest.mark.parametrize("avx512_bf16, amx, native", [(False, False, False), (True, False, True), (False, True, True)])
def test_native_bf16_follows_torchs_probes(monkeypatch, avx512_bf16, amx, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert cpu_features.native_cpu_bf16() is native
    assert cpu_features.cpu_description()["native_bf16"] is native


def test_flags_decide_without_torchs_probes(monkeypatch):
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    monkeypatch.setattr(cpu_features, "_cpuinfo", lambda: ("Some Xeon", {"avx2", "avx512bw", "avx512vl", "avx512dq", "amx_bf16"}))
    assert cpu_features.native_cpu_bf16() is True
    monkeypatch.setattr(cpu_features, "_cpuinfo", lambda: ("Some EPYC", {"avx2", "fma"}))
    assert cpu_features.native_cpu_bf16() is False


def test_onednn_bf16_is_torchs_own_answer():
    assert cpu_features.onednn_bf16() is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_warns_only_where_onednn_has_no_bf16(monkeypatch, caplog):
    monkeypatch.setattr(cpu_features, "onednn_bf16", lambda: False)
    monkeypatch.setattr(cpu_features, "_cpuinfo", lambda: ("Some EPYC", {"avx2"}))
    with caplog.at_level(logging.WARNING, logger=cpu_features.__name__):
        assert cpu_features.warn_if_slow_cpu_bf16(torch.device("cpu"), torch.bfloat16) is True
        assert cpu_features.warn_if_slow_cpu_bf16("cpu", torch.float32, torch.bfloat16, what="--autocast") is True
        assert cpu_features.warn_if_slow_cpu_bf16("cpu", torch.float32) is False
        assert cpu_features.warn_if_slow_cpu_bf16("cpu", torch.float16) is False
        assert cpu_features.warn_if_slow_cpu_bf16("cuda", torch.bfloat16) is False
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("--dtype bfloat16 on a CPU without AVX-512 (Some EPYC)")
    assert messages[1].startswith("--autocast bfloat16") and "slower than float32" in messages[1]
    monkeypatch.setattr(cpu_features, "onednn_bf16", lambda: True)
    assert cpu_features.warn_if_slow_cpu_bf16("cpu", torch.bfloat16) is False
