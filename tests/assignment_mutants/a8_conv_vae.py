"""Wrong answers to assignment 8 (SD's convolutional VAE) and the test cells that must catch them.

Each part's test plugs diffusers' versions of the earlier parts into the student's class, so every mutant
fails its own part only.
"""

RESNET_DEFAULT_EPS = '''
class ResnetBlock2D(nn.Module):
    def __init__(self, in_channels, out_channels, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h
'''

RESNET_ALWAYS_SHORTCUT = '''
class ResnetBlock2D(nn.Module):
    def __init__(self, in_channels, out_channels, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.conv_shortcut(x) + h
'''

RESNET_ACTIVATION_BEFORE_NORM = '''
class ResnetBlock2D(nn.Module):
    def __init__(self, in_channels, out_channels, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x):
        h = self.conv1(self.norm1(F.silu(x)))
        h = self.conv2(self.norm2(F.silu(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h
'''

ATTENTION_WITHOUT_SCALE = '''
class VAEAttention(nn.Module):
    def __init__(self, channels, groups):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)
        weights = torch.softmax(self.to_q(h) @ self.to_k(h).transpose(1, 2), dim=-1)
        return x + self.to_out[0](weights @ self.to_v(h)).transpose(1, 2).reshape(B, C, H, W)
'''

ATTENTION_TRANSPOSE_INSTEAD_OF_RESHAPE = '''
class VAEAttention(nn.Module):
    def __init__(self, channels, groups):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.group_norm(x).reshape(B, H * W, C)
        weights = torch.softmax(self.to_q(h) @ self.to_k(h).transpose(1, 2) / math.sqrt(C), dim=-1)
        return x + self.to_out[0](weights @ self.to_v(h)).reshape(B, C, H, W)
'''

DOWNSAMPLE_SYMMETRIC_PADDING = '''
class Downsample2D(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
'''

UPSAMPLE_BILINEAR = '''
class Downsample2D(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2D(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="bilinear"))
'''

MID_BLOCK_ATTENTION_FIRST = '''
class MidBlock2D(nn.Module):
    def __init__(self, channels, groups, attention=True):
        super().__init__()
        self.attentions = nn.ModuleList([VAEAttention(channels, groups)] if attention else [])
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups) for _ in range(2)])

    def forward(self, x):
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](self.resnets[0](x))
'''

ENCODER_SINGLE_Z = '''
class Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        widths, g = config.block_out_channels, config.norm_num_groups
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        for i, width in enumerate(widths):
            level = nn.Module()
            level.resnets = nn.ModuleList(ResnetBlock2D(widths[max(i - 1, 0)] if j == 0 else width, width, g)
                                          for j in range(config.layers_per_block))
            if i < len(widths) - 1:
                level.downsamplers = nn.ModuleList([Downsample2D(width)])
            self.down_blocks.append(level)
        self.mid_block = MidBlock2D(widths[-1], g, config.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(g, widths[-1], eps=EPS)
        self.conv_out = nn.Conv2d(widths[-1], config.latent_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down_blocks:
            for resnet in level.resnets:
                h = resnet(h)
            for downsample in getattr(level, "downsamplers", []):
                h = downsample(h)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(h))))
'''

ENCODER_WITHOUT_FINAL_ACTIVATION = '''
class Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        widths, g = config.block_out_channels, config.norm_num_groups
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        for i, width in enumerate(widths):
            level = nn.Module()
            level.resnets = nn.ModuleList(ResnetBlock2D(widths[max(i - 1, 0)] if j == 0 else width, width, g)
                                          for j in range(config.layers_per_block))
            if i < len(widths) - 1:
                level.downsamplers = nn.ModuleList([Downsample2D(width)])
            self.down_blocks.append(level)
        self.mid_block = MidBlock2D(widths[-1], g, config.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(g, widths[-1], eps=EPS)
        self.conv_out = nn.Conv2d(widths[-1], 2 * config.latent_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down_blocks:
            for resnet in level.resnets:
                h = resnet(h)
            for downsample in getattr(level, "downsamplers", []):
                h = downsample(h)
        return self.conv_out(self.conv_norm_out(self.mid_block(h)))
'''

DECODER_AS_MANY_BLOCKS_AS_ENCODER = '''
class Decoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        widths, g = tuple(reversed(config.block_out_channels)), config.norm_num_groups
        self.conv_in = nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)
        self.mid_block = MidBlock2D(widths[0], g, config.mid_block_add_attention)
        self.up_blocks = nn.ModuleList()
        for i, width in enumerate(widths):
            level = nn.Module()
            level.resnets = nn.ModuleList(ResnetBlock2D(widths[max(i - 1, 0)] if j == 0 else width, width, g)
                                          for j in range(config.layers_per_block))
            if i < len(widths) - 1:
                level.upsamplers = nn.ModuleList([Upsample2D(width)])
            self.up_blocks.append(level)
        self.conv_norm_out = nn.GroupNorm(g, widths[-1], eps=EPS)
        self.conv_out = nn.Conv2d(widths[-1], config.out_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid_block(self.conv_in(z))
        for level in self.up_blocks:
            for resnet in level.resnets:
                h = resnet(h)
            for upsample in getattr(level, "upsamplers", []):
                h = upsample(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
'''

DECODER_NOT_REVERSED = '''
class Decoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        widths, g = tuple(config.block_out_channels), config.norm_num_groups
        self.conv_in = nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)
        self.mid_block = MidBlock2D(widths[0], g, config.mid_block_add_attention)
        self.up_blocks = nn.ModuleList()
        for i, width in enumerate(widths):
            level = nn.Module()
            level.resnets = nn.ModuleList(ResnetBlock2D(widths[max(i - 1, 0)] if j == 0 else width, width, g)
                                          for j in range(config.layers_per_block + 1))
            if i < len(widths) - 1:
                level.upsamplers = nn.ModuleList([Upsample2D(width)])
            self.up_blocks.append(level)
        self.conv_norm_out = nn.GroupNorm(g, widths[-1], eps=EPS)
        self.conv_out = nn.Conv2d(widths[-1], config.out_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid_block(self.conv_in(z))
        for level in self.up_blocks:
            for resnet in level.resnets:
                h = resnet(h)
            for upsample in getattr(level, "upsamplers", []):
                h = upsample(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
'''

_VAE_HEAD = '''
class AutoencoderKL(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        c = config.latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1)
        self.post_quant_conv = nn.Conv2d(c, c, 1)
'''

VAE_STD_IS_VARIANCE = _VAE_HEAD + '''
    def encode(self, x):
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x, sample_posterior=False, generator=None):
        mean, logvar = self.encode(x)
        if not sample_posterior:
            return self.decode(mean)
        return self.decode(mean + torch.exp(logvar) * torch.randn(mean.shape, generator=generator))
'''

VAE_DECODE_SKIPS_POST_QUANT_CONV = _VAE_HEAD + '''
    def encode(self, x):
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z):
        return self.decoder(z)

    def forward(self, x, sample_posterior=False, generator=None):
        mean, logvar = self.encode(x)
        if not sample_posterior:
            return self.decode(mean)
        return self.decode(mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator))
'''

VAE_LOGVAR_NOT_CLAMPED = _VAE_HEAD + '''
    def encode(self, x):
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x, sample_posterior=False, generator=None):
        mean, logvar = self.encode(x)
        if not sample_posterior:
            return self.decode(mean)
        return self.decode(mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator))
'''

VAE_USES_DIFFUSERS = '''
import diffusers


class AutoencoderKL(diffusers.AutoencoderKL):
    def __init__(self, config):
        n = len(config.block_out_channels)
        super().__init__(in_channels=config.in_channels, out_channels=config.out_channels,
                         latent_channels=config.latent_channels, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=config.block_out_channels,
                         layers_per_block=config.layers_per_block, norm_num_groups=config.norm_num_groups,
                         mid_block_add_attention=config.mid_block_add_attention)

    def encode(self, x):
        posterior = super().encode(x).latent_dist
        return posterior.mean, posterior.logvar

    def decode(self, z):
        return super().decode(z).sample

    def forward(self, x, sample_posterior=False, generator=None):
        return super().forward(x, sample_posterior=sample_posterior, generator=generator).sample
'''

MUTANTS = [
    {"name": "resnet_default_eps", "replace": {"resnet_block": RESNET_DEFAULT_EPS},
     "expect_fail": ["test_resnet_block"]},
    {"name": "resnet_always_shortcut", "replace": {"resnet_block": RESNET_ALWAYS_SHORTCUT},
     "expect_fail": ["test_resnet_block"]},
    {"name": "resnet_activation_before_norm", "replace": {"resnet_block": RESNET_ACTIVATION_BEFORE_NORM},
     "expect_fail": ["test_resnet_block"]},
    {"name": "attention_without_scale", "replace": {"vae_attention": ATTENTION_WITHOUT_SCALE},
     "expect_fail": ["test_attention"]},
    {"name": "attention_reshape_mixes_channels", "replace": {"vae_attention": ATTENTION_TRANSPOSE_INSTEAD_OF_RESHAPE},
     "expect_fail": ["test_attention"]},
    {"name": "downsample_symmetric_padding", "replace": {"resample": DOWNSAMPLE_SYMMETRIC_PADDING},
     "expect_fail": ["test_resample"]},
    {"name": "upsample_bilinear", "replace": {"resample": UPSAMPLE_BILINEAR}, "expect_fail": ["test_resample"]},
    {"name": "mid_block_attention_first", "replace": {"mid_block": MID_BLOCK_ATTENTION_FIRST},
     "expect_fail": ["test_mid_block"]},
    {"name": "encoder_single_z", "replace": {"encoder": ENCODER_SINGLE_Z}, "expect_fail": ["test_encoder"]},
    {"name": "encoder_without_final_activation", "replace": {"encoder": ENCODER_WITHOUT_FINAL_ACTIVATION},
     "expect_fail": ["test_encoder"]},
    {"name": "decoder_as_many_blocks_as_encoder", "replace": {"decoder": DECODER_AS_MANY_BLOCKS_AS_ENCODER},
     "expect_fail": ["test_decoder"]},
    {"name": "decoder_not_reversed", "replace": {"decoder": DECODER_NOT_REVERSED}, "expect_fail": ["test_decoder"]},
    {"name": "vae_std_is_variance", "replace": {"autoencoder_kl": VAE_STD_IS_VARIANCE},
     "expect_fail": ["test_autoencoder"]},
    {"name": "vae_decode_skips_post_quant_conv", "replace": {"autoencoder_kl": VAE_DECODE_SKIPS_POST_QUANT_CONV},
     "expect_fail": ["test_autoencoder"]},
    {"name": "vae_logvar_not_clamped", "replace": {"autoencoder_kl": VAE_LOGVAR_NOT_CLAMPED},
     "expect_fail": ["test_autoencoder"]},
    # a forbidden import anywhere in the student's cells voids every answer that forbids it (course_lib.grading.sanitize)
    {"name": "vae_uses_diffusers", "replace": {"autoencoder_kl": VAE_USES_DIFFUSERS},
     "expect_fail": ["test_resnet_block", "test_attention", "test_resample", "test_mid_block", "test_encoder",
                     "test_decoder", "test_autoencoder"]},
]
