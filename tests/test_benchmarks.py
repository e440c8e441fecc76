"""The benchmark registry: one table per benchmark that conversion, data, training and evaluation read."""

import json
from pathlib import Path

import pytest

from extdm_diffusers import FlowAutoencoder
from extdm_diffusers.architectures import ARCHITECTURE_PRESETS
from extdm_diffusers.benchmarks import BENCHMARKS, Benchmark, get_benchmark
from extdm_diffusers.conversion import original_unet_kwargs, unet_config_from_original

CONFIGS = Path(__file__).parent / "benchmark_configs.json"


def test_five_benchmarks_with_case_insensitive_names():
    assert sorted(BENCHMARKS) == ["bair", "cityscapes", "kth", "smmnist", "ucf101"]
    assert get_benchmark("KTH") is get_benchmark(" kth ") is BENCHMARKS["kth"]
    assert get_benchmark("UCF-101") is get_benchmark("ucf") is BENCHMARKS["ucf101"]
    with pytest.raises(KeyError, match=r"unknown benchmark 'mnist'; choose one of \['bair', 'cityscapes'"):
        get_benchmark("mnist")


def test_values_of_the_original_configs_and_scripts():
    kth, bair, cityscapes, ucf = (get_benchmark(n) for n in ("kth", "bair", "cityscapes", "ucf101"))
    # only the Cityscapes evaluation estimates occlusion (valid_DM_cityscapes.sh --estimate_occlusion_map)
    assert (kth.evaluation.use_occlusion, bair.evaluation.use_occlusion, cityscapes.evaluation.use_occlusion) == (False, False, True)
    assert (kth.evaluation.cond_frames, kth.evaluation.pred_frames) == (10, 40)
    assert (ucf.evaluation.pred_frames, ucf.flow_autoencoder["num_regions"], ucf.crop_width, ucf.evaluation.video_stride) == (12, 64, 64, 10)
    assert (bair.autoencoder_training.min_frame_distance, bair.autoencoder_training.max_frame_distance) == (10, 30)
    assert cityscapes.autoencoder_training.pyramid_scales == (1.0, 0.5, 0.25, 0.125)
    assert cityscapes.flow_autoencoder["bg_predictor_params"]["bg_type"] == "perspective"
    assert (bair.denoiser_training.learning_rate, kth.denoiser_training.lr_gamma) == (1.5e-4, 0.75)
    for benchmark in BENCHMARKS.values():
        protocol = benchmark.evaluation
        assert (protocol.num_videos, protocol.num_samples, protocol.seed, protocol.num_inference_steps, protocol.eta) == (256, 100, 1000, 10, 1.0)
        assert benchmark.architecture in ARCHITECTURE_PRESETS


def test_autoencoder_config_is_complete_and_overrides_deep_merge():
    smmnist = get_benchmark("smmnist")
    config = smmnist.flow_autoencoder_config(region_predictor_params={"block_expansion": 8})
    assert config["region_predictor_params"]["block_expansion"] == 8 and config["region_predictor_params"]["temperature"] == 0.1
    assert smmnist.flow_autoencoder["region_predictor_params"]["block_expansion"] == 32  # the registry is not mutated
    registered = FlowAutoencoder(**smmnist.flow_autoencoder_config()).config
    for key, value in smmnist.flow_autoencoder.items():
        assert registered[key] == value, key  # nothing left to code defaults


def test_unet_config_takes_the_feature_channels_and_overrides():
    config = get_benchmark("bair").unet_config(64, base_channels=16)
    assert config["cond_feature_channels"] == 64 and config["base_channels"] == 16
    assert config["condition_feature_mode"] == "trajectory_attention" and config["motion_embedding_channels"] == 64
    assert (config["num_cond_frames"], config["num_pred_frames"]) == (2, 10)


def _original_dm_config(benchmark):
    """The parts of the benchmark's original ``config/DM/*.yaml`` that the converter reads."""
    return {"dataset_params": {"train_params": {"cond_frames": benchmark.train_cond_frames,
                                                "pred_frames": benchmark.train_pred_frames}}}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_native_unet_config_is_what_the_converter_makes_of_the_original(name):
    benchmark = get_benchmark(name)
    kwargs = original_unet_kwargs(benchmark.architecture, _original_dm_config(benchmark))
    assert benchmark.unet_config() == unet_config_from_original(benchmark.architecture, **kwargs)


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_configs_are_the_ones_the_registry_always_gave(name):
    """``benchmark_configs.json``: the configs the registry gave when it still built them through the converter
    (JSON: tuples as lists)."""
    expected = json.loads(CONFIGS.read_text())[name]
    benchmark = get_benchmark(name)
    built = {
        "unet": benchmark.unet_config(),
        "unet64": benchmark.unet_config(64),
        "unet_override": benchmark.unet_config(32, base_channels=16, channel_mults=(1, 2)),
        "flow": benchmark.flow_autoencoder_config(),
        "flow_override": benchmark.flow_autoencoder_config(num_regions=4, generator_params={"block_expansion": 8}),
    }
    assert json.loads(json.dumps(built)) == expected


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_a_benchmark_round_trips_through_json(name):
    benchmark = get_benchmark(name)
    data = json.loads(json.dumps(benchmark.to_dict()))
    assert data == benchmark.to_dict()  # JSON types already
    restored = Benchmark.from_dict(data)
    assert restored == benchmark and repr(restored) == repr(benchmark)  # tuples are tuples again
    assert set(data) == {"name", "display_name", "frame_size", "num_channels", "flow_autoencoder", "architecture",
                         "train_cond_frames", "train_pred_frames", "autoencoder_training", "denoiser_training",
                         "evaluation", "paper_results", "frame_width", "notes"}


def test_from_dict_names_the_field_that_is_wrong():
    data = get_benchmark("kth").to_dict()
    with pytest.raises(ValueError, match=r"`benchmark.evaluation`: unknown fields \['pred_frame'\]"):
        Benchmark.from_dict(dict(data, evaluation=dict(data["evaluation"], pred_frame=3)))
    with pytest.raises(ValueError, match=r"`benchmark`: missing fields \['architecture'\]"):
        Benchmark.from_dict({k: v for k, v in data.items() if k != "architecture"})
    with pytest.raises(TypeError, match=r"`benchmark.denoiser_training` must be a mapping"):
        Benchmark.from_dict(dict(data, denoiser_training=3))
