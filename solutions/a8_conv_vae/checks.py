"""The grader's own checks of a8_conv_vae (instructor-only; format: course_lib/grading/verdicts.py).

Each check loads secret random weights into the student's module (built as its test builds it: parts 4-7 with
diffusers' versions of the earlier parts inside) and compares its output with course_lib.models.autoencoder_kl
(diffusers' layout, tested equal to diffusers) run in float64 on the same weights and inputs.

Tolerances: weights are PyTorch's default initialisation plus N(0, 0.1^2), so activations stay at a few units.
A float32 block (two 3x3 convs over <= 32 channels, two GroupNorms) carries ~1.2e-7 * 300 terms^0.5 * |x| ~ 1e-5
of rounding per unit: blocks atol 5e-5, rtol 1e-5. The encoder, decoder and whole VAE are ~10-40 such layers
deep: atol 5e-4, rtol 1e-4.
"""
import torch

from course_lib.grading.verdicts import Check
from course_lib.models import autoencoder_kl as ref

_BLOCKS = ("with _using(ResnetBlock2D=_RefResnet, VAEAttention=_RefAttention, Downsample2D=_RefDownsample, "
           "Upsample2D=_RefUpsample, MidBlock2D=_RefMidBlock):")
_LOAD = """
def _load(module, prefix):
    module.load_state_dict({k[len(prefix):]: v for k, v in inputs.items() if k.startswith(prefix)}, strict=True)
    return module.eval()
"""


def _seeded(make, g):
    """A reference module with default initialisation drawn from ``g``, every parameter perturbed by N(0, 0.1^2)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31, (), generator=g)))
        module = make()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module


def _weights(module, prefix):
    return {prefix + k: v.detach().clone() for k, v in module.state_dict().items()}


def _run(module, state, prefix, *args):
    """Run the reference ``module`` in float64 with the weights under ``prefix`` of ``state``."""
    module = module.double().eval()
    module.load_state_dict({k[len(prefix):]: v.double() for k, v in state.items() if k.startswith(prefix)})
    with torch.no_grad():
        return module(*[a.double() for a in args]).float()


def _config(**kw):
    return ref.AutoencoderKLConfig(**kw)


# --------------------------------------------------------------------------------------------- part 1

_RESNETS = [(8, 16, 4, 1.0), (16, 16, 8, 0.01), (12, 4, 2, 3.0)]  # (in, out, groups, input scale)


def _resnet_inputs(g):
    out = {}
    for i, (cin, cout, groups, scale) in enumerate(_RESNETS):
        out.update(_weights(_seeded(lambda: ref.ResnetBlock2D(cin, cout, groups), g), f"{i}.w."))
        out[f"{i}.x"] = torch.randn(2, cin, 5, 6, generator=g) * scale
    return out


RESNET = _LOAD + """
for i, (cin, cout, groups) in enumerate([(8, 16, 4), (16, 16, 8), (12, 4, 2)]):
    with torch.no_grad():
        outputs[f"{i}"] = _load(ResnetBlock2D(cin, cout, groups), f"{i}.w.")(inputs[f"{i}.x"])
"""


def _resnet_expected(x):
    return {f"{i}": _run(ref.ResnetBlock2D(cin, cout, groups), x, f"{i}.w.", x[f"{i}.x"])
            for i, (cin, cout, groups, _) in enumerate(_RESNETS)}


# --------------------------------------------------------------------------------------------- part 2

_ATTENTIONS = [(16, 4, (4, 4)), (8, 2, (3, 5)), (32, 8, (2, 6))]


def _attention_inputs(g):
    out = {}
    for i, (channels, groups, size) in enumerate(_ATTENTIONS):
        out.update(_weights(_seeded(lambda: ref.VAEAttention(channels, groups), g), f"{i}.w."))
        out[f"{i}.x"] = torch.randn(2, channels, *size, generator=g) * 2
    return out


ATTENTION = _LOAD + """
for i, (channels, groups) in enumerate([(16, 4), (8, 2), (32, 8)]):
    with torch.no_grad():
        outputs[f"{i}"] = _load(VAEAttention(channels, groups), f"{i}.w.")(inputs[f"{i}.x"])
"""


def _attention_expected(x):
    return {f"{i}": _run(ref.VAEAttention(channels, groups), x, f"{i}.w.", x[f"{i}.x"])
            for i, (channels, groups, _) in enumerate(_ATTENTIONS)}


# --------------------------------------------------------------------------------------------- part 3

def _resample_inputs(g):
    out = {}
    for i, channels in enumerate((8, 4)):
        out.update(_weights(_seeded(lambda: ref.Downsample2D(channels), g), f"down{i}.w."))
        out.update(_weights(_seeded(lambda: ref.Upsample2D(channels), g), f"up{i}.w."))
        out[f"{i}.x"] = torch.randn(2, channels, 6, 10, generator=g)
    return out


RESAMPLE = _LOAD + """
for i, channels in enumerate((8, 4)):
    with torch.no_grad():
        outputs[f"down{i}"] = _load(Downsample2D(channels), f"down{i}.w.")(inputs[f"{i}.x"])
        outputs[f"up{i}"] = _load(Upsample2D(channels), f"up{i}.w.")(inputs[f"{i}.x"])
"""


def _resample_expected(x):
    out = {}
    for i, channels in enumerate((8, 4)):
        out[f"down{i}"] = _run(ref.Downsample2D(channels), x, f"down{i}.w.", x[f"{i}.x"])
        out[f"up{i}"] = _run(ref.Upsample2D(channels), x, f"up{i}.w.", x[f"{i}.x"])
    return out


# --------------------------------------------------------------------------------------------- part 4

_MIDS = [(16, 4, True), (8, 2, False)]


def _mid_inputs(g):
    out = {}
    for i, (channels, groups, attention) in enumerate(_MIDS):
        out.update(_weights(_seeded(lambda: ref.MidBlock2D(channels, groups, attention), g), f"{i}.w."))
        out[f"{i}.x"] = torch.randn(2, channels, 3, 5, generator=g)
    return out


MID = _LOAD + """
for i, (channels, groups, attention) in enumerate([(16, 4, True), (8, 2, False)]):
    """ + _BLOCKS + """
        block = MidBlock2D(channels, groups, attention)
    with torch.no_grad():
        outputs[f"{i}"] = _load(block, f"{i}.w.")(inputs[f"{i}.x"])
"""


def _mid_expected(x):
    return {f"{i}": _run(ref.MidBlock2D(channels, groups, attention), x, f"{i}.w.", x[f"{i}.x"])
            for i, (channels, groups, attention) in enumerate(_MIDS)}


# ---------------------------------------------------------------------------------------- parts 5-7

_CONFIGS = [dict(in_channels=2, out_channels=1, latent_channels=3, block_out_channels=(8, 16, 16),
                 layers_per_block=2, norm_num_groups=4, mid_block_add_attention=True),
            dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                 layers_per_block=1, norm_num_groups=4, mid_block_add_attention=False)]
_CONFIG_SOURCE = ("[VAEConfig(in_channels=2, out_channels=1, latent_channels=3, block_out_channels=(8, 16, 16), "
                  "layers_per_block=2, norm_num_groups=4, mid_block_add_attention=True), "
                  "VAEConfig(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), "
                  "layers_per_block=1, norm_num_groups=4, mid_block_add_attention=False)]")


def _part_inputs(part):
    def inputs(g):
        out = {}
        for i, kw in enumerate(_CONFIGS):
            config = _config(**kw)
            make = {"encoder": lambda: ref.Encoder(config), "decoder": lambda: ref.Decoder(config),
                    "vae": lambda: ref.AutoencoderKL(config)}[part]
            module = _seeded(make, g)
            if part == "vae" and i == 1:  # log-variances far outside [-30, 20]: the clamp must show
                with torch.no_grad():
                    module.quant_conv.bias[config.latent_channels:] += 60.0
            out.update(_weights(module, f"{i}.w."))
            f = config.downsample_factor
            out[f"{i}.x"] = torch.randn(2, config.in_channels, 2 * f, 3 * f, generator=g)
            out[f"{i}.z"] = torch.randn(2, config.latent_channels, 2, 3, generator=g)
            out[f"{i}.seed"] = torch.randint(0, 2**30, (), generator=g)
        return out
    return inputs


ENCODER = _LOAD + f"""
for i, config in enumerate({_CONFIG_SOURCE}):
    {_BLOCKS}
        module = Encoder(config)
    with torch.no_grad():
        outputs[f"{{i}}"] = _load(module, f"{{i}}.w.")(inputs[f"{{i}}.x"])
"""

DECODER = _LOAD + f"""
for i, config in enumerate({_CONFIG_SOURCE}):
    {_BLOCKS}
        module = Decoder(config)
    with torch.no_grad():
        outputs[f"{{i}}"] = _load(module, f"{{i}}.w.")(inputs[f"{{i}}.z"])
"""

VAE = _LOAD + f"""
for i, config in enumerate({_CONFIG_SOURCE}):
    with _using(Encoder=_RefEncoder, Decoder=_RefDecoder):
        module = _load(AutoencoderKL(config), f"{{i}}.w.")
    with torch.no_grad():
        outputs[f"{{i}}.mean"], outputs[f"{{i}}.logvar"] = module.encode(inputs[f"{{i}}.x"])
        outputs[f"{{i}}.x_hat"] = module(inputs[f"{{i}}.x"])
        if i == 0:  # (config 1 has huge log-variances: a sampled reconstruction would be all rounding)
            outputs["0.sampled"] = module(inputs["0.x"], sample_posterior=True,
                                          generator=torch.Generator().manual_seed(int(inputs["0.seed"])))
        outputs[f"{{i}}.decoded"] = module.decode(inputs[f"{{i}}.z"])
"""


def _encoder_expected(x):
    return {f"{i}": _run(ref.Encoder(_config(**kw)), x, f"{i}.w.", x[f"{i}.x"]) for i, kw in enumerate(_CONFIGS)}


def _decoder_expected(x):
    return {f"{i}": _run(ref.Decoder(_config(**kw)), x, f"{i}.w.", x[f"{i}.z"]) for i, kw in enumerate(_CONFIGS)}


def _vae_expected(x):
    out = {}
    for i, kw in enumerate(_CONFIGS):
        model = ref.AutoencoderKL(_config(**kw)).double().eval()
        model.load_state_dict({k[len(f"{i}.w."):]: v.double() for k, v in x.items() if k.startswith(f"{i}.w.")})
        with torch.no_grad():
            posterior = model.encode(x[f"{i}.x"].double())
            noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(int(x[f"{i}.seed"])))
            out.update({f"{i}.mean": posterior.mean, f"{i}.logvar": posterior.logvar,
                        f"{i}.x_hat": model.decode(posterior.mean), f"{i}.decoded": model.decode(x[f"{i}.z"].double())})
            if i == 0:  # noise drawn in float32, as the student's
                out["0.sampled"] = model.decode(posterior.mean + posterior.std * noise.double())
    return {k: v.float() for k, v in out.items()}


CHECKS = {
    "test_resnet_block": Check(probe=RESNET, inputs=_resnet_inputs, expect=_resnet_expected, rtol=1e-5, atol=5e-5),
    "test_attention": Check(probe=ATTENTION, inputs=_attention_inputs, expect=_attention_expected, rtol=1e-5,
                            atol=5e-5),
    "test_resample": Check(probe=RESAMPLE, inputs=_resample_inputs, expect=_resample_expected, rtol=1e-5, atol=5e-5),
    "test_mid_block": Check(probe=MID, inputs=_mid_inputs, expect=_mid_expected, rtol=1e-5, atol=1e-4),
    "test_encoder": Check(probe=ENCODER, inputs=_part_inputs("encoder"), expect=_encoder_expected, rtol=1e-4,
                          atol=5e-4),
    "test_decoder": Check(probe=DECODER, inputs=_part_inputs("decoder"), expect=_decoder_expected, rtol=1e-4,
                          atol=5e-4),
    "test_autoencoder": Check(probe=VAE, inputs=_part_inputs("vae"), expect=_vae_expected, rtol=1e-4, atol=5e-4),
}
