"""The original ExtDM denoiser modules and the ``ExtDMUNet3DModel`` config that each one is.

The original repository has one ``DenoiseNet_*`` file per denoiser variant; here they are one model whose config
says which variant it is. ``ARCHITECTURE_PRESETS`` holds, per original module name, the config fields that make
the variant; ``PAPER_UNET_CONFIG`` the sizes every paper denoiser shares. The benchmark registry builds its
denoiser configs from both, the checkpoint converter maps original ``Unet3D`` arguments onto them.
"""

from __future__ import annotations

from typing import Any, Dict

WO_REF = "DenoiseNet_STWAtt_w_wo_ref_adaptor_cross_multi"
TRAJ_U12 = "DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_u12"
TRAJ_U22 = "DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_u22"
TRAJ_ADA = "DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_ada"
TRAJ_ADA_U22 = "DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_ada_u22"

#: The feature width the original ``traj`` denoisers hard-code (adaptor, trajectory attention, noise embedding).
ORIGINAL_FEATURE_CHANNELS = 256

#: What the original wrapper (``VideoFlowDiffusion_multi*.py``) builds every paper denoiser with: dim 64,
#: dim_mults (1, 2, 4, 4), and the original ``Unet3D`` defaults for the rest.
PAPER_UNET_CONFIG: Dict[str, Any] = dict(
    base_channels=64,
    channel_mults=(1, 2, 4, 4),
    init_channels=None,
    init_kernel_size=7,
    resnet_groups=8,
    attention_heads=8,
    adaptor_layers=None,
    use_deconv=True,
    padding_mode="zeros",
)

#: The config fields that make each original denoiser module, for the paper's four levels; ``window_size`` and
#: ``attention_head_dim`` are the original file's own constructor defaults.
ARCHITECTURE_PRESETS: Dict[str, Dict[str, Any]] = {
    WO_REF: dict(
        include_reference_motion=False,
        condition_feature_mode="none",
        motion_embedding_channels=None,
        window_size=(2, 4, 4),
        attention_head_dim=32,
    ),
    TRAJ_U12: dict(
        include_reference_motion=True,
        condition_feature_mode="trajectory_attention",
        motion_embedding_channels=ORIGINAL_FEATURE_CHANNELS,
        window_size=(2, 4, 4),
        attention_head_dim=32,
    ),
    TRAJ_ADA: dict(
        include_reference_motion=True,
        condition_feature_mode="adaptor",
        motion_embedding_channels=ORIGINAL_FEATURE_CHANNELS,
        window_size=(4, 4, 4),
        attention_head_dim=16,
    ),
    TRAJ_ADA_U22: dict(
        include_reference_motion=True,
        condition_feature_mode="adaptor",
        block_layout="grouped",
        block_temporal_attention=True,
        down_block_adaptors=(True, True, True, True),  # every down block, whatever the number of levels
        adaptor_kernel_size=(3, 3, 3),
        adaptor_zero_init=False,
        motion_embedding_channels=None,
        window_size=(4, 4, 4),
        attention_head_dim=32,
    ),
}
ARCHITECTURE_PRESETS[TRAJ_U22] = ARCHITECTURE_PRESETS[TRAJ_U12]  # the two files are identical
