"""Benchmarks defined in a file (extdm_diffusers.benchmarks.load_benchmark, extdm-benchmark show): full and partial
definitions, every refusal naming the key, the frame-size rule checked against the models themselves, the
benchmark a pipeline folder records, and conversion from --benchmark without the original YAML."""

import json

import pytest
import torch
import yaml

from extdm_diffusers.benchmark_cli import main as benchmark_main
from extdm_diffusers.convert import main as convert_main
from extdm_diffusers.benchmarks import (
    BENCHMARKS,
    BenchmarkDefinitionError,
    frame_size_problem,
    get_benchmark,
    load_benchmark,
    pipeline_benchmark,
)

from test_predict import TINY_AE  # the 32-pixel autoencoder of the tests

ISSUE_EXAMPLE = {"base": "kth", "name": "my-robot", "frame_size": 64, "num_channels": 3, "train_cond_frames": 4,
                 "train_pred_frames": 8, "evaluation": {"cond_frames": 4, "pred_frames": 16, "num_videos": 64}}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_show_prints_a_complete_file_that_loads_back_as_the_registry_entry(name, tmp_path, capsys):
    benchmark_main(["show", name])
    path = tmp_path / f"{name}.json"
    path.write_text(capsys.readouterr().out)
    assert load_benchmark(str(path)) == get_benchmark(name)  # also: every registry entry passes validation
    assert load_benchmark(name) is get_benchmark(name)


def test_a_partial_file_is_deep_merged_over_its_base(tmp_path):
    kth = get_benchmark("kth")
    for path, text in ((tmp_path / "robot.json", json.dumps(ISSUE_EXAMPLE)), (tmp_path / "robot.yaml", yaml.safe_dump(ISSUE_EXAMPLE))):
        path.write_text(text)
        robot = load_benchmark(path)
        assert (robot.name, robot.display_name, robot.train_cond_frames, robot.train_pred_frames) == ("my-robot", "my-robot", 4, 8)
        assert (robot.evaluation.cond_frames, robot.evaluation.pred_frames, robot.evaluation.num_videos) == (4, 16, 64)
        # the rest is KTH's: its protocol's other values, its autoencoder, its training
        assert robot.evaluation.use_occlusion is False and robot.evaluation.num_samples == 100
        assert robot.flow_autoencoder == kth.flow_autoencoder and robot.architecture == kth.architecture
        assert robot.denoiser_training == kth.denoiser_training
        # the paper's numbers are the base's data's, not a renamed benchmark's
        assert robot.paper_results == {} and robot.notes == ""
    grey = load_benchmark({"base": "kth", "num_channels": 1})
    assert grey.num_channels == 1 and grey.flow_autoencoder["num_channels"] == 1
    assert grey.flow_autoencoder_config()["num_channels"] == 1 and grey.paper_results == kth.paper_results


@pytest.mark.parametrize("definition, message", [
    ({"base": "kth", "colour": 3}, "unknown fields ['colour']"),
    ({"base": "kth", "evaluation": {"horizon": 3}}, "`benchmark.evaluation`: unknown fields ['horizon']"),
    ({"base": "kth", "frame_size": "64"}, "`frame_size` must be an integer, got '64'"),
    ({"base": "kth", "evaluation": {"pred_frames": 2.5}}, "`evaluation.pred_frames` must be an integer"),
    ({"base": "kth", "evaluation": {"use_occlusion": "no"}}, "`evaluation.use_occlusion` must be true or false"),
    ({"base": "kth", "evaluation": 4}, "`evaluation` must be a mapping"),
    ({"base": "kth", "denoiser_training": {"lr_milestones": [10, "x"]}}, "`denoiser_training.lr_milestones` must be a list of integers"),
    ({"base": "kth", "flow_autoencoder": {"region_predictor_params": {"blocks": 3}}},
     "unknown keys ['flow_autoencoder.region_predictor_params.blocks']; `flow_autoencoder.region_predictor_params` takes"),
    ({"base": "kth", "flow_autoencoder": {"num_regions": "5"}}, "`flow_autoencoder.num_regions` must be an integer, got '5'"),
    ({"base": "kth", "flow_autoencoder": 5}, "`flow_autoencoder` must be a mapping of its fields, got 5"),
    ({"base": "kth", "architecture": "DenoiseNet_nope"}, "`architecture` 'DenoiseNet_nope' is unknown; choose one of"),
    ({"base": "kth", "frame_size": 48}, "`frame_size` 48: the region predictor sees 24x24 and needs a multiple of 32; "
                                        "with this benchmark's `flow_autoencoder` (and architecture) frame sizes that work are multiples of 64"),
    ({"base": "kth", "train_cond_frames": 4}, "`evaluation.cond_frames` (10) must equal `train_cond_frames` (4)"),
    ({"base": "kth", "evaluation": {"pred_frames": 0}}, "`evaluation.pred_frames` must be >= 1, got 0"),
    ({"base": "kth", "num_channels": 2}, "`num_channels` must be 1 or 3, got 2"),
    ({"base": "kth", "autoencoder_training": {"min_frame_distance": 30}}, "need 0 <= min <= max, got 30 and 20"),
    ({"base": "smmnist", "train_cond_frames": 1, "evaluation": {"cond_frames": 1}}, "`train_cond_frames` must be >= 2, got 1"),
    ({"base": "kitti"}, "`base`: unknown benchmark 'kitti'; choose one of"),
    ({"name": "x"}, "missing fields"),
])
def test_bad_definitions_are_refused_naming_the_key(definition, message, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(definition))
    with pytest.raises(BenchmarkDefinitionError) as error:
        load_benchmark(str(path))
    assert message in str(error.value) and str(error.value).startswith(str(path))
    assert "\n" not in str(error.value)


def test_unreadable_files_and_unknown_names(tmp_path):
    (tmp_path / "broken.yaml").write_text("base: [kth\n")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(BenchmarkDefinitionError, match="broken.yaml is not valid JSON/YAML"):
        load_benchmark(str(tmp_path / "broken.yaml"))
    with pytest.raises(BenchmarkDefinitionError, match="must hold a mapping of benchmark fields, got list"):
        load_benchmark(str(tmp_path / "list.json"))
    with pytest.raises(BenchmarkDefinitionError, match="benchmark file not found"):
        load_benchmark(str(tmp_path / "missing.json"))
    with pytest.raises(KeyError, match="unknown benchmark 'kitti'"):
        load_benchmark("kitti")


def test_show_refuses_bad_input_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark_main(["show", "kitti"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("extdm-benchmark: error: unknown benchmark 'kitti'")




@pytest.mark.parametrize("size, channel_mults", [(24, (1, 2)), (32, (1, 2)), (36, (1, 2)), (44, (1, 2)), (40, (1, 2)),
                                                 (24, (1, 2, 2, 2)), (32, (1, 2, 2, 2))])
def test_the_frame_size_rule_is_what_the_models_can_run(size, channel_mults):
    """frame_size_problem's verdict, against the models themselves: encode, denoise and decode one window."""
    from extdm_diffusers.models import ExtDMUNet3DModel, FlowAutoencoder
    from extdm_diffusers.pipelines import ExtDMPipeline
    from extdm_diffusers.schedulers import ExtDMDDIMScheduler

    torch.manual_seed(0)
    ae = FlowAutoencoder(**get_benchmark("kth").flow_autoencoder_config(**TINY_AE, sample_size=size)).eval()
    unet = ExtDMUNet3DModel(num_cond_frames=2, num_pred_frames=1, cond_feature_channels=ae.feature_channels,
                            base_channels=8, channel_mults=channel_mults, attention_heads=2, attention_head_dim=4,
                            resnet_groups=4).eval()
    pipe = ExtDMPipeline(ae, unet, ExtDMDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    problem = frame_size_problem(size, ae.config, channel_mults)
    try:
        pipe(torch.rand(1, 2, 3, size, size), num_inference_steps=1, output_type="pt")
        ran = True
    except RuntimeError:
        ran = False
    assert ran == (problem is None), problem
    assert (problem is None) == (size % 8 == 0 and (len(channel_mults) < 4 or size % 16 == 0))


def test_a_pipeline_records_its_benchmark_through_save_and_both_loaders(tmp_path):
    from diffusers import DiffusionPipeline

    from extdm_diffusers import ExtDMPipeline

    robot = load_benchmark(dict(ISSUE_EXAMPLE, frame_size=32, flow_autoencoder=TINY_AE, train_cond_frames=2,
                                train_pred_frames=2, evaluation={"cond_frames": 2, "pred_frames": 3}))
    pipe = robot.random_pipeline(base_channels=8, channel_mults=(1, 2), attention_heads=2, attention_head_dim=4,
                                 resnet_groups=4, motion_embedding_channels=None, condition_feature_mode="none")
    assert pipe.benchmark is None
    pipe.register_to_config(benchmark=robot.for_models(pipe.flow_autoencoder.config, pipe.unet.config).to_dict())
    pipe.save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["benchmark"]["name"] == "my-robot"
    for loaded in (ExtDMPipeline.from_pretrained(tmp_path / "pipe"),
                   DiffusionPipeline.from_pretrained(tmp_path / "pipe", custom_pipeline="pipeline_extdm", trust_remote_code=True)):
        assert loaded.benchmark == robot
        assert set(loaded.components) == {"flow_autoencoder", "unet", "scheduler"}
    # the recorded benchmark is the default; an explicit one wins, unless its frames differ
    assert pipeline_benchmark(None, pipe.config["benchmark"]) == robot
    assert pipeline_benchmark({"base": "kth", "frame_size": 32, "flow_autoencoder": TINY_AE}, pipe.config["benchmark"]).name == "kth"
    with pytest.raises(BenchmarkDefinitionError, match=r"--benchmark kth: `frame_size` is 64 but the pipeline was made for 32 \(my-robot\)"):
        pipeline_benchmark("kth", pipe.config["benchmark"])
    with pytest.raises(BenchmarkDefinitionError, match="--benchmark is needed: this pipeline records no benchmark"):
        pipeline_benchmark(None, None)


def test_conversion_takes_a_benchmark_in_place_of_the_original_yaml(tmp_path, capsys):
    """The released .pth files and a benchmark (name or file) are enough; the folder records the benchmark with the
    checkpoint's window, and the original YAML still converts to the same weights."""
    from reference_cases import diffusion_checkpoint, load_case, split_autoencoder

    from extdm_diffusers import ExtDMPipeline

    meta, _, state_dict = load_case("pipeline_traj_ada")
    torch.save(split_autoencoder(state_dict, "ae."), tmp_path / "ae.pth")
    torch.save(diffusion_checkpoint(state_dict), tmp_path / "dm.pth")
    original = meta["config"]
    definition = {"base": "kth", "name": "fixture", "frame_size": original["dataset_params"]["frame_shape"],
                  "flow_autoencoder": original["flow_params"]["model_params"], "train_cond_frames": 2, "train_pred_frames": 5,
                  "evaluation": {"cond_frames": 2}}
    (tmp_path / "fixture.json").write_text(json.dumps(definition))
    (tmp_path / "dm.yaml").write_text(yaml.safe_dump(dict(original, experiment_name="kth64")))

    def convert(out, *how):
        """``python -m extdm_diffusers.convert``, in this process: (exit status, stderr)."""
        capsys.readouterr()
        try:
            convert_main(["--ae_checkpoint", str(tmp_path / "ae.pth"), "--dm_checkpoint", str(tmp_path / "dm.pth"),
                          *how, "--output_dir", str(tmp_path / out)])
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code
        return code, capsys.readouterr().err

    code, err = convert("from-file", "--benchmark", str(tmp_path / "fixture.json"))
    assert code == 0, err
    from_file = ExtDMPipeline.from_pretrained(tmp_path / "from-file")
    recorded = from_file.benchmark
    assert recorded.name == "fixture" and recorded.frame_size == 32
    assert (recorded.train_cond_frames, recorded.train_pred_frames) == (from_file.num_cond_frames, from_file.num_pred_frames)
    card = (tmp_path / "from-file" / "README.md").read_text()
    assert "## Benchmark `fixture`" in card and "Original configuration" not in card

    assert convert("from-yaml", "--config", str(tmp_path / "dm.yaml"))[0] == 0
    from_yaml = ExtDMPipeline.from_pretrained(tmp_path / "from-yaml")
    assert from_yaml.benchmark.name == "kth" and from_yaml.benchmark.frame_size == 32  # named by experiment_name
    for a, b in zip(from_file.unet.state_dict().values(), from_yaml.unet.state_dict().values()):
        assert torch.equal(a, b)

    code, err = convert("none")
    assert code == 2 and err == ("python -m extdm_diffusers.convert: error: pass --benchmark NAME_OR_FILE (or the "
                                 "original YAML with --config)\n")
    code, err = convert("wrong", "--benchmark", "kth")  # the paper-size autoencoder cannot take the fixture's weights
    assert code == 2 and err.count("\n") == 1 and err.startswith("python -m extdm_diffusers.convert: error: ")
