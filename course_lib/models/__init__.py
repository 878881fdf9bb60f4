"""Stable Diffusion's three networks in their real layouts, parameter for parameter as diffusers/transformers name them.

    unet_2d_condition   UNet2DConditionModel (diffusers' names)    assignment 6 builds it
    clip_text           CLIPTextModel (transformers' names)        assignment 7 builds it
    autoencoder_kl      AutoencoderKL (diffusers' names)

Each module's docstring shows how to construct its model from a config dataclass (``.from_diffusers(dict)`` /
``.from_transformers(dict)``, ``.sd15()``, ``.tiny()``) or from a folder (``from_pretrained``).
"""
from course_lib.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from course_lib.models.clip_text import CLIPTextConfig, CLIPTextModel
from course_lib.models.unet_2d_condition import UNet2DConditionConfig, UNet2DConditionModel

__all__ = ["UNet2DConditionConfig", "UNet2DConditionModel", "CLIPTextConfig", "CLIPTextModel",
           "AutoencoderKLConfig", "AutoencoderKL"]
