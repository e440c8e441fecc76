"""reuse_freed_cpu_memory: freed blocks come back without page faults; the user's glibc settings stand; the
command-line tools set it."""

import os
import platform
import subprocess
import sys

import pytest

from extdm_diffusers import cpu_memory

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the setting is glibc's mallopt")

# Allocates, touches and frees five 40 MB tensors twice; prints the first call's answer and the page faults of the
# second round (the first warms glibc's dynamic threshold, which stops at 32 MiB, below these blocks).
CHURN = r"""
import resource, sys, torch
from extdm_diffusers.cpu_memory import reuse_freed_cpu_memory
applied = reuse_freed_cpu_memory() if sys.argv[1] == "reuse" else None
def churn():
    for _ in range(5):
        block = torch.empty(10_000_000)
        block.fill_(1.0)
        del block
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run_churn(mode: str, **env: str):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True,
                         env={**environment, **env}).stdout.split()
    return out[0], int(out[1])


@glibc_only
def test_freed_blocks_are_reused_without_page_faults():
    pages_per_block = 40_000_000 // os.sysconf("SC_PAGE_SIZE")
    applied, faults = run_churn("reuse")
    assert applied == "True"
    assert faults < pages_per_block // 10  # all five blocks came from the process's own heap
    applied, faults = run_churn("default")
    assert faults > 4 * pages_per_block  # glibc's default maps (and zeroes) each block again


@glibc_only
@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "131072"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}])
def test_the_users_glibc_settings_stand(env):
    applied, faults = run_churn("reuse", **env)
    assert applied == "False"


def test_later_calls_give_the_first_answer(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_applied", None)
    calls = []
    monkeypatch.setattr(cpu_memory, "set_glibc_malloc_thresholds", lambda *thresholds: calls.append(thresholds) or True)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert cpu_memory.reuse_freed_cpu_memory() and cpu_memory.reuse_freed_cpu_memory()
    assert calls == [(cpu_memory.REUSED_BLOCK_BYTES, cpu_memory.REUSED_BLOCK_BYTES)]


def test_command_line_tools_set_it(monkeypatch, tmp_path):
    from extdm_diffusers import predict
    from extdm_diffusers.evaluation import cli

    calls = []
    for module in (cli, predict):
        monkeypatch.setattr(module, "reuse_freed_cpu_memory", lambda name=module.__name__: calls.append(name))
    assert cli.main(["--pipeline", str(tmp_path / "missing"), "--dataset_dir", str(tmp_path),
                     "--output_dir", str(tmp_path / "out")]) == 1
    with pytest.raises(SystemExit):
        predict.main(["--pipeline", str(tmp_path / "missing"), "--video", str(tmp_path / "missing.mp4"),
                      "--output", str(tmp_path / "out")])
    assert calls == ["extdm_diffusers.evaluation.cli", "extdm_diffusers.predict"]
