"""Stable Diffusion v1.x's networks, module for module and name for name as diffusers/transformers, so that
real checkpoints load with a strict ``load_state_dict``: one module per network (``autoencoder_kl``,
``unet_2d_condition``, ``clip_text``) and ``convert`` for the checkpoint layouts."""
