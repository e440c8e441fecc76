"""Conversion of original ExtDM checkpoints (github.com/nku-zhichengzhang/ExtDM) to extdm-diffusers models.

Every function takes plain state dicts (what ``torch.load`` of an original ``.pth`` holds) and checks
them strictly: a key that is unknown, missing or of the wrong shape raises an error naming it.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from .architectures import (
    ARCHITECTURE_PRESETS,
    ORIGINAL_FEATURE_CHANNELS,
    PAPER_UNET_CONFIG,
    TRAJ_ADA,
    TRAJ_ADA_U22,
    TRAJ_U12,
    TRAJ_U22,
    WO_REF,
)
from .models.flow_autoencoder import FlowAutoencoder
from .models.unet_3d_extdm import ExtDMUNet3DModel
from .pipelines.pipeline_extdm import ExtDMPipeline
from .schedulers.scheduling_extdm_ddim import ExtDMDDIMScheduler

StateDict = Mapping[str, torch.Tensor]


class CheckpointConversionError(ValueError):
    """An original checkpoint does not fit the model it is converted to."""


def _listing(keys: List[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''}]"


#: Which original ``Unet3D`` constructor argument sets the shape of a parameter (our names), to say what to fix.
_UNET_SHAPE_ARGUMENTS = [
    (r"conv_in\.", "`channels` (motion + feature channels) or `init_dim`"),
    (r"time_embedding\.|time_proj", "`dim`"),
    (r".*relative_position_bias_table", "`window_size`"),
    (r"time_position_bias\.", "`attn_heads`"),
    (r".*(to_qkv|to_out)\.", "`attn_heads` / `attn_dim_head`"),
    (r".*(adaptor|temporal_modulator|extrapolator)", "`cond_num` / `pred_num` (or `l`, the adaptor layers)"),
    (r"(down_blocks|up_blocks|mid_block|downsamplers|upsamplers)\.", "`dim` / `dim_mults`"),
]


def _shape_hint(key: str) -> str:
    for pattern, argument in _UNET_SHAPE_ARGUMENTS:
        if re.match(pattern, key):
            return f" (set the original Unet3D argument {argument})"
    return ""


def _load_strict(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], what: str) -> None:
    expected = model.state_dict()
    unknown = sorted(set(state_dict) - set(expected))
    missing = sorted(set(expected) - set(state_dict))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        + (_shape_hint(k) if isinstance(model, ExtDMUNet3DModel) else "")
        for k in set(state_dict) & set(expected)
        if state_dict[k].shape != expected[k].shape
    )
    problems = []
    if unknown:
        problems.append(f"unknown keys {_listing(unknown)}")
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if mis_shaped:
        problems.append(f"mis-shaped keys {_listing(mis_shaped)}")
    if problems:
        raise CheckpointConversionError(f"{what}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def _rename(state_dict: StateDict, rules: Iterable[Tuple[str, str]], source: str) -> Dict[str, torch.Tensor]:
    """Apply the first matching (regex, replacement) rule to every key; a key no rule matches is unknown."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    renamed, unknown = {}, []
    for key, value in state_dict.items():
        for pattern, replacement in compiled:
            if pattern.fullmatch(key):
                if replacement is not None:
                    renamed[pattern.sub(replacement, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointConversionError(f"{source}: unknown keys {_listing(sorted(unknown))}")
    return renamed


# ------------------------------------------------------------------------------------------------------------
# Flow autoencoder
# ------------------------------------------------------------------------------------------------------------
_AUTOENCODER_PARTS = ("generator", "region_predictor", "bg_predictor")


def flow_autoencoder_state_dict_from_original(checkpoint: Mapping[str, StateDict]) -> Dict[str, torch.Tensor]:
    """The state dict of ``FlowAutoencoder`` from ``{"generator": sd, "region_predictor": sd, "bg_predictor": sd}``."""
    missing_parts = [part for part in _AUTOENCODER_PARTS if part not in checkpoint]
    if missing_parts:
        raise CheckpointConversionError(
            f"autoencoder checkpoint lacks {missing_parts}; it must hold the dicts {list(_AUTOENCODER_PARTS)}"
        )
    state_dict = {}
    for part in _AUTOENCODER_PARTS:
        for key, value in checkpoint[part].items():
            if part == "generator" and key.startswith("pixelwise_flow_predictor."):
                state_dict[key] = value  # a sibling of the generator here
            else:
                state_dict[f"{part}.{key}"] = value
    return state_dict


def flow_autoencoder_from_original(checkpoint: Mapping[str, StateDict], flow_params: Mapping) -> FlowAutoencoder:
    """A ``FlowAutoencoder`` from an original autoencoder checkpoint and the original YAML's
    ``flow_params.model_params``."""
    model = FlowAutoencoder(**dict(flow_params))
    _load_strict(model, flow_autoencoder_state_dict_from_original(checkpoint), "autoencoder checkpoint")
    return model.eval()


# ------------------------------------------------------------------------------------------------------------
# Denoiser (Unet3D)
# ------------------------------------------------------------------------------------------------------------
#: Original modules that build parts their forward never calls: the checkpoint's keys of these are dropped.
_UNCALLED_ORIGINAL_PARTS: Dict[str, Tuple[str, ...]] = {
    TRAJ_U12: ("init_adaptor.",),
    TRAJ_U22: ("init_adaptor.",),
    TRAJ_ADA_U22: ("init_noise_conv.",),
}

#: The original ``Unet3D`` constructor defaults that all the files share (``window_size`` and ``attn_dim_head``
#: differ between them: their defaults are the presets').
_ORIGINAL_UNET_DEFAULTS = dict(dim_mults=(1, 2, 4), channels=3, attn_heads=8, init_kernel_size=7, resnet_groups=8,
                               use_deconv=True, padding_mode="zeros", cond_num=0, pred_num=0, out_grid_dim=2,
                               out_conf_dim=1)

_ORIGINAL_UNET_ARGS = {
    "dim", "cond_dim", "out_grid_dim", "out_conf_dim", "window_size", "dim_mults", "channels", "cond_channels",
    "attn_heads", "attn_dim_head", "use_bert_text_cond", "init_dim", "init_kernel_size", "resnet_groups",
    "use_final_activation", "learn_null_cond", "use_deconv", "padding_mode", "cond_num", "pred_num", "framesize", "l",
}


def _original_motion_width(architecture: str) -> int:
    """Channels of the motion the original ``Unet3D`` input starts with: embedded or the raw flow + occlusion."""
    return 3 if ARCHITECTURE_PRESETS[architecture]["motion_embedding_channels"] is None else ORIGINAL_FEATURE_CHANNELS


def unet_config_from_original(architecture: str, **unet_kwargs) -> dict:
    """``ExtDMUNet3DModel`` config for an original denoiser module name and ``Unet3D`` constructor arguments."""
    if architecture not in ARCHITECTURE_PRESETS:
        raise ValueError(f"`architecture` must be one of {sorted(ARCHITECTURE_PRESETS)}, got {architecture!r}")
    unknown = sorted(set(unet_kwargs) - _ORIGINAL_UNET_ARGS)
    if unknown:
        raise ValueError(f"unknown original Unet3D arguments {unknown}")
    if "l" in unet_kwargs and architecture != TRAJ_ADA:
        raise ValueError(f"the original {architecture} takes no `l` (adaptor layers) argument")
    preset = ARCHITECTURE_PRESETS[architecture]
    args = dict(_ORIGINAL_UNET_DEFAULTS, window_size=preset["window_size"], attn_dim_head=preset["attention_head_dim"])
    args.update(unet_kwargs)
    if "dim" not in args:
        raise ValueError("the original Unet3D argument `dim` is required")
    if args.get("cond_dim") is not None or args.get("use_bert_text_cond"):
        raise ValueError("text/class conditioning of the original Unet3D (`cond_dim`, `use_bert_text_cond`) is not "
                         "supported: no released ExtDM model uses it")
    if (args["out_grid_dim"], args["out_conf_dim"]) != (2, 1):
        raise ValueError("ExtDM denoisers predict 2 flow and 1 occlusion channels (`out_grid_dim=2`, `out_conf_dim=1`)")
    # `use_final_activation`, `framesize`, `cond_channels` and `learn_null_cond` (without a condition) change
    # nothing the original forward computes.
    motion_width = _original_motion_width(architecture)
    feature_channels = args["channels"] - motion_width
    conditioned = preset["condition_feature_mode"] != "none"
    if feature_channels <= 0 or (conditioned and feature_channels != ORIGINAL_FEATURE_CHANNELS):
        expected = f"{motion_width} + {ORIGINAL_FEATURE_CHANNELS}" if conditioned else f"{motion_width} + feature channels"
        raise ValueError(f"`channels` of {architecture} must be {expected}, got {args['channels']}")

    config = dict(preset)
    if "down_block_adaptors" in preset:  # the preset's flags are for four levels; the original treats all alike
        config["down_block_adaptors"] = preset["down_block_adaptors"][:1] * len(args["dim_mults"])
    config.update(
        num_cond_frames=args["cond_num"],
        num_pred_frames=args["pred_num"],
        cond_feature_channels=feature_channels,
        base_channels=args["dim"],
        channel_mults=tuple(args["dim_mults"]),
        init_channels=args.get("init_dim"),
        init_kernel_size=args["init_kernel_size"],
        resnet_groups=args["resnet_groups"],
        attention_heads=args["attn_heads"],
        attention_head_dim=args["attn_dim_head"],
        window_size=tuple(args["window_size"]),
        adaptor_layers=args.get("l") or None,
        use_deconv=args["use_deconv"],
        padding_mode=args["padding_mode"],
    )
    return config


_RESNET_RULES = [
    (r"mlp\.1\.(weight|bias)", r"time_emb_proj.\1"),
    (r"block1\.proj\.(weight|bias)", r"conv1.\1"),
    (r"block1\.norm\.(weight|bias)", r"norm1.\1"),
    (r"block2\.proj\.(weight|bias)", r"conv2.\1"),
    (r"block2\.norm\.(weight|bias)", r"norm2.\1"),
    (r"res_conv\.(weight|bias)", r"conv_shortcut.\1"),
]
_WINDOW_ATTENTION_RULES = [
    (r"fn\.norm\.gamma", "norm.weight"),
    (r"fn\.fn\.attn\.qkv\.weight", "to_qkv.weight"),
    (r"fn\.fn\.attn\.proj\.(weight|bias)", r"to_out.\1"),
    (r"fn\.fn\.attn\.relative_position_bias_table", "relative_position_bias_table"),
    (r"fn\.fn\.attn\.relative_position_index", None),  # recomputed from the window size
    (r"fn\.fn\.attn\.rotary_emb\.freqs", None),  # fixed, checked in unet_state_dict_from_original
]
_TEMPORAL_ATTENTION_RULES = [
    (r"fn\.norm\.gamma", "channel_norm.weight"),
    (r"fn\.fn\.fn\.norm\.(weight|bias)", r"layer_norm.\1"),
    (r"fn\.fn\.fn\.attn\.to_qkv\.weight", "to_qkv.weight"),
    (r"fn\.fn\.fn\.attn\.to_out\.weight", "to_out.weight"),
    (r"fn\.fn\.fn\.attn\.rotary_emb\.freqs", None),  # fixed, checked in unet_state_dict_from_original
]
_ADAPTOR_RULES = [
    (r"adaptors\.predictor\.fn\.norm\.gamma", "extrapolator.predictor_norm.weight"),
    (r"adaptors\.predictor\.fn\.fn\.(weight|bias)", r"extrapolator.predictor.\1"),
    (r"adaptors\.extrapolators\.(\d+)\.fn\.weight", r"extrapolator.extrapolators.\1.weight"),
    (r"Tmodulator\.(weight|bias)", r"temporal_modulator.\1"),
    (r"fuser\.norm\.gamma", "fuser_norm.weight"),
    (r"fuser\.fn\.(weight|bias)", r"fuser.\1"),
]
_HEAD_RULES = [(r"0\." + p, "resnet." + r) for p, r in _RESNET_RULES] + [(r"1\.(weight|bias)", r"conv.\1")]


def _scoped(original_prefix: str, new_prefix: str, rules) -> List[Tuple[str, Optional[str]]]:
    """Rules of a component, prefixed; the component's group references shift past the prefix's groups."""
    offset = re.compile(original_prefix).groups
    scoped = []
    for pattern, replacement in rules:
        if replacement is None:
            scoped.append((original_prefix + pattern, replacement))
        else:
            shifted = re.sub(r"\\(\d)", lambda m: "\\" + str(int(m.group(1)) + offset), replacement)
            scoped.append((original_prefix + pattern, new_prefix + shifted))
    return scoped


def _unet_rename_rules(config: dict, architecture: str) -> List[Tuple[str, Optional[str]]]:
    grouped = config.get("block_layout") == "grouped"
    block_parts = [(r"0\.", "resnet1.", _RESNET_RULES), (r"1\.", "window_attention1.", _WINDOW_ATTENTION_RULES),
                   (r"2\.", "resnet2.", _RESNET_RULES), (r"3\.", "window_attention2.", _WINDOW_ATTENTION_RULES),
                   (r"4\.", "adaptor.", _ADAPTOR_RULES)]
    if grouped:
        block_parts.append((r"5\.", "temporal_attention.", _TEMPORAL_ATTENTION_RULES))
    sampler_index = "6" if grouped else "5"
    rules: List[Tuple[str, Optional[str]]] = []
    for original, ours in (("downs", "down_blocks"), ("ups", "up_blocks")):
        for index, prefix, part_rules in block_parts:
            rules += _scoped(rf"{original}\.(\d+)\.{index}", ours + r".\1." + prefix, part_rules)
        sampler = "downsamplers" if original == "downs" else "upsamplers"
        rules.append((rf"{original}\.(\d+)\.{sampler_index}\.(?:1\.)?(weight|bias)", sampler + r".\1.conv.\2"))
    for original, ours, part_rules in (
        ("mid_block1", "mid_block.resnet1", _RESNET_RULES), ("mid_attn1", "mid_block.window_attention1", _WINDOW_ATTENTION_RULES),
        ("mid_block2", "mid_block.resnet2", _RESNET_RULES), ("mid_attn2", "mid_block.window_attention2", _WINDOW_ATTENTION_RULES),
        ("mid_adaptor", "mid_block.adaptor", _ADAPTOR_RULES),
        ("init_temporal_attn", "temporal_attention_in", _TEMPORAL_ATTENTION_RULES),
        ("cond_temporal_attn", "condition_temporal_attention", _TEMPORAL_ATTENTION_RULES),
        ("cond_adaptor", "condition_adaptor", _ADAPTOR_RULES),
        ("final_conv", "flow_out", _HEAD_RULES), ("occlusion_map", "occlusion_out", _HEAD_RULES),
    ):
        rules += _scoped(original + r"\.", ours + ".", part_rules)
    rules += [
        (r"init_conv\.(weight|bias)", r"conv_in.\1"),
        (r"time_mlp\.1\.(weight|bias)", r"time_embedding.linear_1.\1"),
        (r"time_mlp\.3\.(weight|bias)", r"time_embedding.linear_2.\1"),
        (r"time_rel_pos_bias\.relative_attention_bias\.weight", "time_position_bias.embedding.weight"),
        (r"init_traj\.cross_att\.linear_([qkv])\.(weight|bias)", r"trajectory_attention.to_\1.\2"),
        (r"init_traj\.cross_att\.linear_o\.(weight|bias)", r"trajectory_attention.to_out.\1"),
        (r"init_traj\.fuser\.(weight|bias)", r"trajectory_attention.fuser.\1"),
    ]
    uncalled = _UNCALLED_ORIGINAL_PARTS.get(architecture, ())
    rules = [(re.escape(prefix) + ".*", None) for prefix in uncalled] + rules
    if config.get("motion_embedding_channels") is not None:
        rules.append((r"init_noise_conv\.(weight|bias)", r"motion_embedding.\1"))
    return rules


def unet_state_dict_from_original(
    state_dict: StateDict, architecture: str, config: dict, rotary_freqs: torch.Tensor
) -> Dict[str, torch.Tensor]:
    """Rename an original ``Unet3D`` state dict to ``ExtDMUNet3DModel``'s; ``rotary_freqs`` are the model's."""
    # The rotary frequencies are fixed, not learned: check them instead of loading them.
    for key, value in state_dict.items():
        if key.endswith("rotary_emb.freqs") and (
            value.shape != rotary_freqs.shape or not torch.allclose(value.float(), rotary_freqs, rtol=1e-5)
        ):
            raise CheckpointConversionError(
                f"{key}: rotary frequencies {value.tolist()} differ from 1/10000^(2i/{2 * len(rotary_freqs)}); this "
                "checkpoint used another rotary embedding setting"
            )
    # Channel layer norms store their scale as (1, C, 1, 1, 1) in the original.
    flattened = {k: v.reshape(-1) if k.endswith(".gamma") else v for k, v in state_dict.items()}
    return _rename(flattened, _unet_rename_rules(config, architecture), f"{architecture} state dict")


def unet_from_original(state_dict: StateDict, architecture: str, **unet_kwargs) -> ExtDMUNet3DModel:
    """An ``ExtDMUNet3DModel`` from an original ``Unet3D`` state dict, the original module name (one of
    ``ARCHITECTURE_PRESETS``) and the original ``Unet3D`` constructor arguments."""
    config = unet_config_from_original(architecture, **unet_kwargs)
    model = ExtDMUNet3DModel(**config)
    converted = unet_state_dict_from_original(state_dict, architecture, config, model.rotary_emb.freqs)
    _load_strict(model, converted, f"{architecture} state dict")
    return model.eval()


# ------------------------------------------------------------------------------------------------------------
# Whole pipeline
# ------------------------------------------------------------------------------------------------------------
def original_unet_kwargs(architecture: str, config: Mapping) -> dict:
    """The ``Unet3D`` constructor arguments the original wrapper (VideoFlowDiffusion_multi*.py) passes for
    ``architecture`` and a DM config: dim 64, dim_mults (1, 2, 4, 4), channels = motion width + 256 features."""
    if architecture not in ARCHITECTURE_PRESETS:
        raise ValueError(f"`architecture` must be one of {sorted(ARCHITECTURE_PRESETS)}, got {architecture!r}")
    train = config["dataset_params"]["train_params"]
    return dict(
        dim=PAPER_UNET_CONFIG["base_channels"], channels=_original_motion_width(architecture) + ORIGINAL_FEATURE_CHANNELS,
        dim_mults=PAPER_UNET_CONFIG["channel_mults"], cond_num=train["cond_frames"], pred_num=train["pred_frames"],
        use_deconv=PAPER_UNET_CONFIG["use_deconv"], padding_mode=PAPER_UNET_CONFIG["padding_mode"],
        learn_null_cond=False, use_final_activation=False,
    )


def infer_unet_from_original(state_dict: StateDict) -> Tuple[str, dict]:
    """The original denoiser module and ``Unet3D`` arguments that a state dict was made with, read from its keys
    and shapes: the released checkpoints carry no architecture label. Returns ``(architecture, unet_kwargs)``;
    ``resnet_groups`` (shape-free) keeps the original default, 8."""

    def shape(key: str) -> Tuple[int, ...]:
        if key not in state_dict:
            raise CheckpointConversionError(f"cannot infer the architecture: the denoiser state dict lacks {key!r}")
        return tuple(state_dict[key].shape)

    keys = set(state_dict)
    if any(re.match(r"downs\.\d+\.6\.", k) for k in keys):
        architecture = TRAJ_ADA_U22  # grouped blocks: temporal attention at 5, the sampler at 6
    elif any(k.startswith("init_traj.") for k in keys):
        architecture = TRAJ_U12
    elif any(k.startswith("cond_adaptor.") for k in keys):
        architecture = TRAJ_ADA
    else:
        architecture = WO_REF
    init_dim, channels, _, _, kernel = shape("init_conv.weight")
    dim = shape("time_mlp.1.weight")[1]
    levels = sorted({int(m.group(1)) for k in keys if (m := re.match(r"downs\.(\d+)\.0\.block1\.proj\.weight", k))})
    dim_mults = tuple(shape(f"downs.{i}.0.block1.proj.weight")[0] // dim for i in levels)
    heads = shape("time_rel_pos_bias.relative_attention_bias.weight")[1]
    dim_head = shape("init_temporal_attn.fn.fn.fn.attn.to_qkv.weight")[0] // (3 * heads)
    # window (d, s, s): d*s*s positions, (2d-1)(2s-1)^2 relative offsets
    positions = shape("downs.0.1.fn.fn.attn.relative_position_index")[0]
    offsets = shape("downs.0.1.fn.fn.attn.relative_position_bias_table")[0]
    windows = [(d, w, w) for d in range(1, 17) for w in range(1, 33) if d * w * w == positions and (2 * d - 1) * (2 * w - 1) ** 2 == offsets]
    if len(windows) != 1:
        raise CheckpointConversionError(f"cannot infer `window_size` from {positions} positions and {offsets} offsets")
    mid_channels = dim * dim_mults[-1]
    modulated_out, modulated_in = shape("mid_adaptor.Tmodulator.weight")[:2]
    layers = len({k for k in keys if re.match(r"mid_adaptor\.adaptors\.extrapolators\.\d+\.fn\.weight", k)})
    observed = modulated_in // mid_channels // (2**layers - 1)
    kwargs = dict(
        dim=dim, channels=channels, dim_mults=dim_mults, attn_heads=heads, attn_dim_head=dim_head, window_size=windows[0],
        init_kernel_size=kernel, cond_num=observed + (1 if architecture == WO_REF else 0), pred_num=modulated_out // mid_channels,
        use_deconv=not any(re.match(r"ups\.\d+\.[56]\.1\.weight", k) for k in keys),
    )
    if init_dim != dim:
        kwargs["init_dim"] = init_dim
    if architecture == TRAJ_ADA:
        kwargs["l"] = layers
    return architecture, kwargs


# Schedule buffers of the original GaussianDiffusion that ExtDMDDIMScheduler holds under the same names.
_SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                     "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod")
_UNCHECKED_SCHEDULE_BUFFERS = {"log_one_minus_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                               "posterior_mean_coef1", "posterior_mean_coef2"}


def pipeline_from_original(
    ae_checkpoint: Mapping[str, StateDict],
    dm_checkpoint: Mapping,
    config: Mapping,
    architecture: str,
    unet_kwargs: Optional[dict] = None,
):
    """An ``ExtDMPipeline`` from original checkpoints.

    Args:
        ae_checkpoint: what an original autoencoder ``.pth`` holds (``generator``, ``region_predictor``, ``bg_predictor``).
        dm_checkpoint: what an original diffusion ``.pth`` holds: ``{"diffusion": GaussianDiffusion state dict, ...}``.
        config: the original DM YAML as a dict (``flow_params``, ``diffusion_params``, ``dataset_params``).
        architecture: the original denoiser module name, e.g. ``DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_ada``,
            or ``"auto"``: inferred with its ``Unet3D`` arguments from the checkpoint (``infer_unet_from_original``).
        unet_kwargs: original ``Unet3D`` arguments, merged over the architecture's: the original wrapper's
            (``original_unet_kwargs``) for a named architecture, the inferred ones for ``"auto"``.
    """
    diffusion_params = config.get("diffusion_params", {}).get("model_params", {})
    if diffusion_params.get("use_residual_flow"):
        raise ValueError("`use_residual_flow: True` is not supported: no released ExtDM model uses it")
    if "diffusion" not in dm_checkpoint:
        raise CheckpointConversionError(f"diffusion checkpoint must hold the key 'diffusion', got {sorted(dm_checkpoint)}")
    flow_params = dict(config["flow_params"]["model_params"])
    flow_params.setdefault("sample_size", config.get("dataset_params", {}).get("frame_shape"))
    flow_autoencoder = flow_autoencoder_from_original(ae_checkpoint, flow_params)

    diffusion = dm_checkpoint["diffusion"]
    denoiser = {k[len("denoise_fn."):]: v for k, v in diffusion.items() if k.startswith("denoise_fn.")}
    schedule = {k: v for k, v in diffusion.items() if not k.startswith("denoise_fn.")}
    unknown = sorted(set(schedule) - set(_SCHEDULE_BUFFERS) - _UNCHECKED_SCHEDULE_BUFFERS)
    if unknown:
        raise CheckpointConversionError(f"diffusion state dict: unknown keys {_listing(unknown)}")
    if "betas" not in schedule:
        raise CheckpointConversionError("diffusion state dict: missing keys ['betas']")

    if architecture == "auto":
        architecture, kwargs = infer_unet_from_original(denoiser)
    else:
        kwargs = original_unet_kwargs(architecture, config)
    kwargs.update(unet_kwargs or {})
    unet = unet_from_original(denoiser, architecture, **kwargs)
    if unet.config.cond_feature_channels != flow_autoencoder.feature_channels:
        raise CheckpointConversionError(
            f"the denoiser expects {unet.config.cond_feature_channels} feature channels, the autoencoder's bottleneck "
            f"has {flow_autoencoder.feature_channels}"
        )
    scheduler = ExtDMDDIMScheduler(num_train_timesteps=len(schedule["betas"]))
    # The schedule is not learned: check that the checkpoint's is the one the scheduler computes.
    for key in _SCHEDULE_BUFFERS:
        if key in schedule:
            ours = getattr(scheduler, key)
            if schedule[key].shape != ours.shape or not torch.allclose(schedule[key].float(), ours, rtol=1e-4, atol=1e-6):
                raise CheckpointConversionError(
                    f"diffusion state dict: `{key}` is not the original cosine schedule that ExtDMDDIMScheduler computes"
                )
    return ExtDMPipeline(flow_autoencoder=flow_autoencoder, unet=unet, scheduler=scheduler)
