"""Conversion a user can trust: the architecture inferred from the checkpoint, --unet_kwargs merged over the
architecture's defaults, and every bad input answered with one line and exit code 2."""

import subprocess
import sys

import pytest
import torch
import yaml

from extdm_diffusers import ExtDMPipeline
from extdm_diffusers.convert import main as convert_main
from extdm_diffusers.architectures import ARCHITECTURE_PRESETS
from extdm_diffusers.conversion import (
    CheckpointConversionError,
    infer_unet_from_original,
    original_unet_kwargs,
    pipeline_from_original,
)
from reference_cases import diffusion_checkpoint, load_case, relative_error, split_autoencoder


@pytest.mark.parametrize("case", ["unet_wo_ref", "unet_traj_u12", "unet_traj_ada", "unet_traj_ada_u22"])
def test_the_architecture_and_its_arguments_are_inferred_from_the_state_dict(case):
    meta, _, state_dict = load_case(case)
    architecture, kwargs = infer_unet_from_original(state_dict)
    expected = ARCHITECTURE_PRESETS[meta["original_module"]]
    assert ARCHITECTURE_PRESETS[architecture] is expected  # traj_u12 and traj_u22 are the same module
    constructor = meta["constructor"]
    for key in ("dim", "channels", "attn_heads", "attn_dim_head", "cond_num", "pred_num", "use_deconv"):
        assert kwargs[key] == constructor[key], key
    assert tuple(kwargs["dim_mults"]) == tuple(constructor["dim_mults"])
    assert tuple(kwargs["window_size"]) == tuple(constructor.get("window_size", expected["window_size"]))


def _write_case(tmp_path, case="pipeline_traj_ada", config_update=None):
    meta, t, state_dict = load_case(case)
    torch.save(split_autoencoder(state_dict, "ae."), tmp_path / "ae.pth")
    torch.save(diffusion_checkpoint(state_dict), tmp_path / "dm.pth")
    config = dict(meta["config"], experiment_name="kth64", **(config_update or {}))
    (tmp_path / "dm.yaml").write_text(yaml.safe_dump(config))
    return meta, t


def _convert(tmp_path, *extra, ae="ae.pth", dm="dm.pth", config="dm.yaml"):
    return subprocess.run(
        [sys.executable, "-m", "extdm_diffusers.convert", "--ae_checkpoint", str(tmp_path / ae),
         "--dm_checkpoint", str(tmp_path / dm), "--config", str(tmp_path / config),
         "--output_dir", str(tmp_path / "converted"), *extra],
        capture_output=True, text=True,
    )


def test_cli_infers_the_architecture_by_default_and_says_so(tmp_path):
    meta, t = _write_case(tmp_path)
    result = _convert(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "inferred from" in result.stdout and meta["original_modules"][1] in result.stdout
    pipe = ExtDMPipeline.from_pretrained(tmp_path / "converted")
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(t["inputs.video"].permute(0, 2, 1, 3, 4), eta=0.0, latents=t["inputs.initial_noise"], output_type="pt").frames
    reference = t["outputs.sample_out_vid"][:, :, 2:].permute(0, 2, 1, 3, 4)
    assert relative_error(frames, reference) < 1e-4


def test_unet_kwargs_merge_over_the_architecture_defaults_and_mismatches_name_the_argument():
    meta, _, state_dict = load_case("pipeline_traj_ada")
    architecture = meta["original_modules"][1]
    defaults = original_unet_kwargs(architecture, meta["config"])
    only_differences = {k: v for k, v in meta["unet_constructor"].items() if defaults.get(k) != v}
    assert "use_deconv" not in only_differences  # the merge must supply it
    ae, dm = split_autoencoder(state_dict, "ae."), diffusion_checkpoint(state_dict)
    pipe = pipeline_from_original(ae, dm, meta["config"], architecture, only_differences)
    assert pipe.unet.config.base_channels == meta["unet_constructor"]["dim"]
    without_heads = {k: v for k, v in only_differences.items() if k != "attn_heads"}
    with pytest.raises(CheckpointConversionError, match=r"set the original Unet3D argument `attn_heads`"):
        pipeline_from_original(ae, dm, meta["config"], architecture, without_heads)


@pytest.mark.parametrize(
    "prepare, kwargs, message",
    [
        (lambda d: None, {"ae": "missing.pth"}, r"checkpoint not found: .*missing\.pth"),
        (lambda d: (d / "text.pth").write_text("not a checkpoint"), {"ae": "text.pth"}, r"text\.pth is not a (readable )?PyTorch checkpoint"),
        (lambda d: (d / "cut.pth").write_bytes((d / "dm.pth").read_bytes()[:2000]), {"dm": "cut.pth"},
         r"cut\.pth is not a readable PyTorch checkpoint \(truncated"),
        (lambda d: (d / "ae_only.yaml").write_text(yaml.safe_dump({"dataset_params": {}})), {"config": "ae_only.yaml"},
         r"ae_only\.yaml has no `flow_params\.model_params`"),
        (lambda d: torch.save({"generator": {}}, d / "nodiff.pth"), {"dm": "nodiff.pth"}, r"nodiff\.pth has no 'diffusion' entry"),
    ],
)
def test_cli_answers_bad_input_with_one_line_and_exit_code_2(tmp_path, capsys, prepare, kwargs, message):
    """In-process (``main`` is what ``python -m extdm_diffusers.convert`` runs; the test above runs that)."""
    _write_case(tmp_path)
    prepare(tmp_path)
    files = {"ae": "ae.pth", "dm": "dm.pth", "config": "dm.yaml", **kwargs}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["--ae_checkpoint", str(tmp_path / files["ae"]), "--dm_checkpoint", str(tmp_path / files["dm"]),
                      "--config", str(tmp_path / files["config"]), "--output_dir", str(tmp_path / "converted")])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("python -m extdm_diffusers.convert: error: ")
    assert __import__("re").search(message, lines[0]), lines[0]
