"""The package as a user installs it (not editable, no clone around): its commands find everything they need
inside the package. A copy of the working tree is installed (``pip install --no-deps``) into a fresh virtual
environment that sees this environment's dependencies, and its commands run from a folder outside the tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

REPO = Path(__file__).resolve().parents[1]

TINY_QUICKSTART = ["--num_train_videos", "8", "--num_test_videos", "2", "--num_frames", "12", "--ae_steps", "2",
                   "--dm_steps", "2", "--ae_batch_size", "2", "--dm_batch_size", "2", "--checkpointing_steps", "2",
                   "--num_inference_steps", "2", "--ae_width", "8", "--feature_width", "32", "--dm_width", "8",
                   "--eval_pred_frames", "6"]


def _tree_copy(destination: Path) -> Path:
    """The files a clone of the working tree holds: tracked and untracked, without what git ignores."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not part of the copy
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def _run(command: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.installed
def test_installed_package_builds_smmnist_and_runs_the_quick_start_outside_the_clone(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout to copy the tree from")
    source = _tree_copy(tmp_path / "clone")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", WANDB_MODE="disabled", PIP_NO_INDEX="1",
               PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    # The wheel is built by this environment (its setuptools: the venv's own bundled one may be too old to build
    # wheels), without build isolation or an index; the venv installs it without dependencies: they are this
    # environment's.
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", wheels,
          source], tmp_path, env)
    (wheel,) = wheels.glob("extdm_diffusers-*.whl")
    _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--ignore-installed", wheel], tmp_path, env)
    shutil.rmtree(source)  # nothing of the tree is left to fall back on

    user_dir = tmp_path / "user"
    user_dir.mkdir()
    located = _run([python, "-c", "import extdm_diffusers; print(extdm_diffusers.__file__)"], user_dir, env)
    package_file = Path(located.stdout.strip()).resolve()
    assert package_file.is_relative_to(venv.resolve()), package_file  # the installed copy, not the editable tree
    assert not package_file.is_relative_to(REPO)

    _run([bin_dir / "extdm-build-dataset", "smmnist", "--source", "bundled", "--output_dir", "data",
          "--num_train", "4", "--num_test", "2", "--num_frames", "6", "--image_size", "32", "--digit_size", "16"],
         user_dir, env)
    built = datasets.load_from_disk(str(user_dir / "data"))
    assert (len(built["train"]), len(built["test"]), built["test"][0]["num_frames"]) == (4, 2, 6)

    _run([bin_dir / "extdm-quickstart", "--output_dir", "qs", *TINY_QUICKSTART], user_dir, env)
    state = json.loads((user_dir / "qs" / "quickstart_state.json").read_text())
    assert state["done"] == ["data", "autoencoder", "denoiser", "evaluation"]
    metrics = json.loads((user_dir / "qs" / "metrics.json").read_text())
    assert metrics["num_videos"] == 2

    # the evaluation's own command, with the flags the quick start's evaluation stage passed: the same numbers
    _run([bin_dir / "extdm-evaluate", "--pipeline", "qs/pipeline", "--dataset_dir", "qs/data", "--output_dir", "again",
          "--num_videos", "2", "--num_samples", "1", "--cond_frames", "5", "--pred_frames", "6",
          "--num_inference_steps", "2", "--seed", "0", "--no_fvd", "--no_lpips"], user_dir, env)
    again = json.loads((user_dir / "again" / "metrics.json").read_text())
    first = json.loads((user_dir / "qs" / "evaluation" / "metrics.json").read_text())
    for metric in ("psnr", "ssim"):
        assert again["extdm"][metric]["mean_of_samples"]["mean"] == first["extdm"][metric]["mean_of_samples"]["mean"]
