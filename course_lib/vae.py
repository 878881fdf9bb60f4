"""A small convolutional variational autoencoder: Stable Diffusion's ``AutoencoderKL`` in miniature.

Latent diffusion (Rombach et al. 2022) does not diffuse pixels. A VAE first squeezes an image x of shape
(C, H, W) into a latent z of shape (c, H/f, W/f); the diffusion model learns and samples in that smaller space,
and the decoder turns its samples back into images. This module builds that VAE from scratch.

Glossary (Kingma & Welling 2014, "Auto-Encoding Variational Bayes"; notation of the LDM paper):
    x            an image (B, C, H, W) with values in [-1, 1] (course convention)
    z            a latent (B, c, H/f, W/f); c = ``latent_channels``
    f            ``downsample_factor`` = 2 ** (number of blocks - 1), e.g. 32x32 images -> 8x8 latents for f = 4
    q(z|x)       the encoder's posterior, a diagonal Gaussian N(mu, sigma^2) for every latent number
    mu, logvar   its mean and log-variance log(sigma^2), predicted by one conv as 2*c channels (as in SD)
    eps          standard normal noise; the reparameterisation z = mu + sigma * eps lets gradients reach mu, sigma
    p(x|z)       the decoder; its output x_hat is unbounded (no tanh), clamp to [-1, 1] only to display it
    KL           KL(q(z|x) || N(0, I)) = 1/2 * sum(mu^2 + sigma^2 - 1 - log sigma^2), summed over a latent
    ELBO         log p(x) >= E_q[log p(x|z)] - KL; training minimises the negative ELBO (see ``vae_loss``)
    beta         weight of the KL term (beta-VAE); small beta = sharper reconstructions, less regular latents
    s            ``scale_factor`` = 1 / std(z): diffusion runs on s * z so the latents have unit variance
                 (Stable Diffusion's 0.18215, see ``estimate_scale_factor``)

Architecture (the layout of diffusers' ``Encoder``/``Decoder``, with fewer and thinner layers):
    encoder: conv_in -> [ResnetBlock x layers_per_block (+ Downsample)] per block -> mid (Resnet, Attention,
             Resnet) -> GroupNorm, SiLU, conv_out to 2c channels -> quant_conv (1x1) -> split into mu, logvar
    decoder: post_quant_conv (1x1) -> conv_in -> mid -> [ResnetBlock x (layers_per_block + 1) (+ Upsample)]
             per block, widest first -> GroupNorm, SiLU, conv_out to C channels
Every block after the first halves the resolution, so ``block_channels=(32, 64, 64)`` gives f = 4.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib._checks import check_bool, check_float, check_int, check_same_shape, check_shape_dim, check_tensor
from course_lib._config import JSONConfig
from course_lib._io import load_pretrained, save_pretrained

__all__ = ["VAEConfig", "DiagonalGaussian", "kl_divergence", "VAE", "VAEOutput", "VAELoss", "vae_loss",
           "estimate_scale_factor"]

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # Stable Diffusion clamps logvar to this range (sigma from 3e-7 to 2e4)


# ----------------------------------------------------------------------------------------------- config

@dataclass
class VAEConfig(JSONConfig):
    """Shape of the VAE. ``len(block_channels)`` blocks; every block after the first halves H and W.

    in_channels       image channels C (3 for RGB, 1 for digits)
    latent_channels   latent channels c (Stable Diffusion: 4)
    block_channels    width of each resolution level, e.g. (32, 64, 64): f = 2 ** (3 - 1) = 4
    layers_per_block  ResnetBlocks per level in the encoder (the decoder uses one more, as in SD)
    norm_groups       GroupNorm groups; must divide every entry of block_channels
    mid_attention     single-head self-attention in the middle block, at the lowest resolution (as in SD)
    """
    in_channels: int = 3
    latent_channels: int = 4
    block_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    norm_groups: int = 8
    mid_attention: bool = True

    def __post_init__(self):
        check_int("in_channels", self.in_channels, minimum=1)
        check_int("latent_channels", self.latent_channels, minimum=1)
        if not isinstance(self.block_channels, (tuple, list)) or len(self.block_channels) == 0:
            raise ValueError(f"block_channels must be a non-empty tuple of positive integers, "
                             f"got {self.block_channels!r}")
        self.block_channels = tuple(self.block_channels)  # JSON gives a list back
        for i, ch in enumerate(self.block_channels):
            check_int(f"block_channels[{i}]", ch, minimum=1)
        check_int("layers_per_block", self.layers_per_block, minimum=1)
        check_int("norm_groups", self.norm_groups, minimum=1)
        for ch in self.block_channels:
            if ch % self.norm_groups != 0:
                raise ValueError(f"norm_groups must divide every entry of block_channels "
                                 f"{self.block_channels}, got norm_groups={self.norm_groups}")
        check_bool("mid_attention", self.mid_attention)

    @property
    def downsample_factor(self) -> int:
        """f: how much smaller the latent is than the image along H and along W."""
        return 2 ** (len(self.block_channels) - 1)

    @classmethod
    def tiny(cls) -> "VAEConfig":
        """For fast tests: 3x32x32 -> 4x16x16, 44k parameters."""
        return cls(in_channels=3, latent_channels=4, block_channels=(8, 16), layers_per_block=1, norm_groups=4)

    @classmethod
    def shapes(cls) -> "VAEConfig":
        """The course's toy shapes: 3x32x32 -> 4x8x8 (f = 4, 12x fewer numbers), 174k parameters.
        Its training time and reconstruction error: docs/results.md."""
        return cls(in_channels=3, latent_channels=4, block_channels=(8, 16, 32), layers_per_block=1,
                   norm_groups=4)

    @classmethod
    def scenes(cls) -> "VAEConfig":
        """The scenes world at Stable Diffusion's own compression: 3x64x64 -> 4x8x8 (f = 8, 48x fewer numbers).
        Its training time and reconstruction: docs/results.md."""
        return cls(in_channels=3, latent_channels=4, block_channels=(8, 16, 32, 64), layers_per_block=1,
                   norm_groups=4)

    @classmethod
    def digits(cls) -> "VAEConfig":
        """sklearn digits upsampled to 1x16x16 -> 2x8x8 latents (f = 2), 166k parameters. The digits hold only
        8x8 numbers of detail, so 2x8x8 loses nothing (measured: docs/results.md)."""
        return cls(in_channels=1, latent_channels=2, block_channels=(16, 32), layers_per_block=1, norm_groups=8)


# ------------------------------------------------------------------------------------ the posterior q(z|x)

def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(mean, exp(logvar)) || N(0, I) ) in closed form, summed over every dimension except the batch.

    For one number: KL = 1/2 * (mu^2 + sigma^2 - 1 - log sigma^2). It is 0 exactly when mu = 0 and sigma = 1.
    mean, logvar: (B, ...) of the same shape. Returns (B,). ``logvar`` is used as given (no clamping).
    """
    check_tensor("mean", mean, floating=True)
    check_tensor("logvar", logvar, floating=True)
    check_same_shape("mean", mean, "logvar", logvar)
    if mean.ndim < 1:
        raise ValueError(f"mean must have a batch dimension, got shape {tuple(mean.shape)}")
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(dim=1) if kl.ndim > 1 else kl


class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))), one independent Gaussian per latent number.

    ``logvar`` is clamped to [-30, 20] as in Stable Diffusion, so ``std`` never underflows to 0 or overflows.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        check_tensor("mean", mean, floating=True)
        check_tensor("logvar", logvar, floating=True)
        check_same_shape("mean", mean, "logvar", logvar)
        self.mean = mean
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    @classmethod
    def from_parameters(cls, parameters: torch.Tensor) -> "DiagonalGaussian":
        """Split (B, 2c, h, w) into mean (B, c, h, w) and logvar (B, c, h, w) along dim 1, mean first (as SD)."""
        check_tensor("parameters", parameters, ndim=4, floating=True)
        if parameters.shape[1] % 2 != 0:
            raise ValueError(f"parameters must have an even number of channels (mean and logvar), "
                             f"got shape {tuple(parameters.shape)}")
        mean, logvar = parameters.chunk(2, dim=1)
        return cls(mean, logvar)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std * eps with eps ~ N(0, I): random, yet differentiable in mean and logvar."""
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The most likely z, i.e. the mean (deterministic encoding)."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) per example, shape (B,)."""
        return kl_divergence(self.mean, self.logvar)


# ---------------------------------------------------------------------------------------- building blocks

class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a skip connection (1x1 conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the h*w positions of a feature map, with a residual connection."""

    def __init__(self, channels: int, norm_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C): every position is a token
        h = F.scaled_dot_product_attention(self.to_q(h), self.to_k(h), self.to_v(h))
        h = self.to_out(h).transpose(1, 2).reshape(B, C, H, W)
        return x + h


class MidBlock(nn.Module):
    """Resnet -> (Attention) -> Resnet at the lowest resolution, where global context is cheap."""

    def __init__(self, channels: int, norm_groups: int, attention: bool):
        super().__init__()
        self.resnet1 = ResnetBlock(channels, channels, norm_groups)
        self.attention = AttentionBlock(channels, norm_groups) if attention else nn.Identity()
        self.resnet2 = ResnetBlock(channels, channels, norm_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnet2(self.attention(self.resnet1(x)))


class Downsample(nn.Module):
    """Halve H and W with a strided 3x3 conv (learned, unlike pooling)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 conv to smooth the blocks."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(in_channels: int, out_channels: int, num_layers: int, norm_groups: int, resample: nn.Module | None):
    layers = [ResnetBlock(in_channels if i == 0 else out_channels, out_channels, norm_groups)
              for i in range(num_layers)]
    return nn.Sequential(*layers, *([resample] if resample is not None else []))


class Encoder(nn.Module):
    """x (B, C, H, W) -> parameters of q(z|x), (B, 2c, H/f, W/f)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        chs, g = config.block_channels, config.norm_groups
        self.conv_in = nn.Conv2d(config.in_channels, chs[0], 3, padding=1)
        self.down = nn.ModuleList(
            _level(chs[max(i - 1, 0)], ch, config.layers_per_block, g, Downsample(ch) if i < len(chs) - 1 else None)
            for i, ch in enumerate(chs))
        self.mid = MidBlock(chs[-1], g, config.mid_attention)
        self.norm_out = nn.GroupNorm(g, chs[-1])
        self.conv_out = nn.Conv2d(chs[-1], 2 * config.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)  # (B, ch, H / 2^i, W / 2^i)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2c, H/f, W/f)


class Decoder(nn.Module):
    """z (B, c, H/f, W/f) -> x_hat (B, C, H, W); the mirror image of the encoder, widest level first."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        chs, g = tuple(reversed(config.block_channels)), config.norm_groups
        self.conv_in = nn.Conv2d(config.latent_channels, chs[0], 3, padding=1)
        self.mid = MidBlock(chs[0], g, config.mid_attention)
        self.up = nn.ModuleList(
            _level(chs[max(i - 1, 0)], ch, config.layers_per_block + 1, g, Upsample(ch) if i < len(chs) - 1 else None)
            for i, ch in enumerate(chs))
        self.norm_out = nn.GroupNorm(g, chs[-1])
        self.conv_out = nn.Conv2d(chs[-1], config.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.up:
            h = level(h)  # (B, ch, 2^i * H/f, 2^i * W/f)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W), unbounded


# ------------------------------------------------------------------------------------------------ the VAE

def _check_images(name: str, x, config: VAEConfig) -> None:
    check_tensor(name, x, ndim=4, floating=True)
    check_shape_dim(name, x, 1, config.in_channels, what="channels (in_channels)")
    f = config.downsample_factor
    if x.shape[2] % f != 0 or x.shape[3] % f != 0:
        raise ValueError(f"{name} must have height and width divisible by downsample_factor={f}, "
                         f"got shape {tuple(x.shape)}")


@dataclass
class VAEOutput:
    """``sample``: the reconstruction x_hat (B, C, H, W); ``posterior``: q(z|x) it was decoded from."""
    sample: torch.Tensor
    posterior: DiagonalGaussian


class VAE(nn.Module):
    """Encoder + Gaussian posterior + decoder. Images in [-1, 1]; decoder output unbounded (clamp to show).

    ``quant_conv`` and ``post_quant_conv`` are the 1x1 convs Stable Diffusion's AutoencoderKL keeps around
    the latent (the names come from VQ-GAN, where a quantiser sat there); we keep them to match its layout.
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        if not isinstance(config, VAEConfig):
            raise ValueError(f"config must be a VAEConfig, got {type(config).__name__}")
        self.config = config
        c = config.latent_channels
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1)
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.decoder = Decoder(config)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x (B, C, H, W) in [-1, 1], H and W divisible by f -> q(z|x) with mean/logvar (B, c, H/f, W/f)."""
        _check_images("x", x, self.config)
        return DiagonalGaussian.from_parameters(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, c, h, w) -> x_hat (B, C, h*f, w*f). Unbounded: not squashed into [-1, 1]."""
        check_tensor("z", z, ndim=4, floating=True)
        check_shape_dim("z", z, 1, self.config.latent_channels, what="channels (latent_channels)")
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                sample_posterior: bool = True) -> VAEOutput:
        """Encode, draw z ~ q(z|x) (or take its mean if ``sample_posterior`` is False), decode."""
        if not isinstance(sample_posterior, bool):
            raise ValueError(f"sample_posterior must be a bool, got {sample_posterior!r}")
        posterior = self.encode(x)
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return VAEOutput(sample=self.decode(z), posterior=posterior)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write config.json and model.safetensors into ``folder``."""
        return save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "VAE":
        return load_pretrained(cls, VAEConfig, folder, device=device)


# ---------------------------------------------------------------------------------------------- training

@dataclass
class VAELoss:
    """``loss`` = ``reconstruction`` + beta * ``kl``; all three are scalars averaged over the batch."""
    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


def vae_loss(x_hat: torch.Tensor, x: torch.Tensor, posterior: DiagonalGaussian, beta: float = 1e-3) -> VAELoss:
    """The negative ELBO, per image, averaged over the batch: sum((x_hat - x)^2) + beta * KL.

    Scale convention (matters when you choose beta): both terms are *sums over one image*, not means over
    pixels. ``reconstruction`` is the squared error summed over the C*H*W pixels; ``kl`` is summed over the
    c*h*w latent numbers. With beta = 1 this is exactly the negative ELBO (up to a constant) of a decoder
    p(x|z) = N(x_hat, 1/2 I), i.e. pixel noise of std 0.71 on a [-1, 1] scale: very blurry reconstructions.
    Smaller beta trusts the pixels more. The default 1e-3 gives sharp reconstructions on the course data
    while the KL still keeps latents near N(0, I) (measured scale factor ~1 on shapes). Stable Diffusion's
    autoencoder also sums per image, but went further, to beta = 1e-6, with an L1 + perceptual reconstruction
    term and a GAN loss. Dividing the SSE by C*H*W would give a per-pixel MSE: divide beta by C*H*W with it.
    """
    check_tensor("x_hat", x_hat, floating=True)
    check_tensor("x", x, floating=True)
    check_same_shape("x_hat", x_hat, "x", x)
    if not isinstance(posterior, DiagonalGaussian):
        raise ValueError(f"posterior must be a DiagonalGaussian, got {type(posterior).__name__}")
    if posterior.mean.shape[0] != x.shape[0]:
        raise ValueError(f"posterior must have the batch size of x ({x.shape[0]}), "
                         f"got mean of shape {tuple(posterior.mean.shape)}")
    check_float("beta", beta, minimum=0.0)
    reconstruction = (x_hat - x).pow(2).flatten(1).sum(dim=1).mean()  # SSE per image, batch mean
    kl = posterior.kl().mean()
    return VAELoss(loss=reconstruction + beta * kl, reconstruction=reconstruction, kl=kl)


@torch.no_grad()
def estimate_scale_factor(vae: VAE, images: torch.Tensor, batch_size: int = 64,
                          generator: torch.Generator | None = None) -> float:
    """s = 1 / std(z) over latents z ~ q(z|x) of a sample of images: the idea behind SD's 0.18215.

    Why: the diffusion model's forward process mixes its input with N(0, I) noise and assumes the data has
    roughly unit variance, so that the noise schedule's signal-to-noise ratios mean what they say. A VAE's
    latents have whatever spread the KL term allowed (SD's are ~5.5 std, hence 1/5.5 = 0.18215). We therefore
    train and sample the diffusion model on s * z, and divide by s before ``decode``. As in the LDM paper, s is
    one number measured on sampled latents (with all elements pooled); latents are scaled, not shifted.
    """
    if not isinstance(vae, VAE):
        raise ValueError(f"vae must be a VAE, got {type(vae).__name__}")
    _check_images("images", images, vae.config)
    check_int("batch_size", batch_size, minimum=1)
    if images.shape[0] < 1:
        raise ValueError(f"images must hold at least one image, got shape {tuple(images.shape)}")
    latents = [vae.encode(batch).sample(generator=generator) for batch in images.split(batch_size)]
    std = torch.cat(latents).flatten().float().std().item()
    if not std > 0:
        raise ValueError(f"images gave latents with std {std}; cannot scale them to unit variance")
    return 1.0 / std
