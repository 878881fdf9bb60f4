"""One table of the bad input a student or instructor is most likely to feed course_lib, across modules.

Every case must raise ValueError whose message names the argument (and so tells the user what to fix).
Each module's own test file has a longer table; this one follows the course-wide checklist: wrong shapes or
channel counts, image sizes the VAE cannot divide, strength outside [0, 1], negative guidance, LoRA rank <= 0,
empty prompt lists, unknown schedule names, missing dataset folders, corrupt checkpoints, bad CLI values.
"""
import pytest
import torch
from torch import nn

from course_lib import attention, data, guidance, lora, schedulers, text, train, unet, vae
from course_lib.demo import main as demo_main

X = torch.zeros(2, 3, 32, 32)


def _corrupt_checkpoint(tmp_path):
    model = nn.Linear(2, 2)
    path = train.save_checkpoint(tmp_path / "ck", 1, {"model": model})
    weights = next(path.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:20])
    return train.load_checkpoint(path, {"model": model})


def _corrupt_safetensors(tmp_path):
    (tmp_path / "lora.safetensors").write_bytes(b"not a safetensors file")
    layer = nn.Sequential()
    layer.to_q = nn.Linear(4, 4)
    lora.inject_lora(layer, lora.LoRAConfig(r=2, target_modules=("to_q",)))
    return lora.load_lora(layer, tmp_path / "lora.safetensors")


CASES = [
    # attention
    ("num_heads", lambda t: attention.MultiHeadAttention(30, 4)),
    ("x", lambda t: attention.MultiHeadAttention(8, 2)(torch.zeros(2, 8))),
    ("context", lambda t: attention.MultiHeadAttention(8, 2, context_dim=6)(torch.zeros(1, 4, 8),
                                                                              torch.zeros(1, 3, 5))),
    ("mask", lambda t: attention.scaled_dot_product_attention(torch.zeros(1, 4, 8), torch.zeros(1, 5, 8),
                                                              torch.zeros(1, 5, 8), mask=torch.zeros(3, 3))),
    # schedulers
    ("beta_schedule", lambda t: schedulers.DDPMScheduler(beta_schedule="sigmoidal")),
    ("beta_schedule", lambda t: schedulers.DDIMScheduler(beta_schedule="quadratic")),
    ("num_inference_steps", lambda t: schedulers.DDIMScheduler().set_timesteps(0)),
    ("num_inference_steps", lambda t: schedulers.DDIMScheduler().set_timesteps(5000)),
    ("eta", lambda t: _ddim_ready().step(torch.zeros(1, 4, 8, 8), 980, torch.zeros(1, 4, 8, 8), eta=-0.5)),
    ("strength", lambda t: _ddim_ready().get_timesteps_for_strength(1.2)),
    ("num_train_timesteps", lambda t: schedulers.DDPMScheduler(num_train_timesteps=0)),
    # guidance
    ("guidance_scale", lambda t: guidance.cfg_combine(torch.zeros(2), torch.zeros(2), -1.0)),
    ("p", lambda t: guidance.drop_condition(torch.zeros(4, 3), torch.zeros(3), p=1.5)),
    ("percentile", lambda t: guidance.dynamic_threshold(torch.zeros(2, 3), percentile=0.0)),
    # vae
    ("x", lambda t: vae.VAE(vae.VAEConfig.tiny()).encode(torch.zeros(2, 1, 32, 32))),
    ("x", lambda t: vae.VAE(vae.VAEConfig.shapes()).encode(torch.zeros(2, 3, 30, 30))),
    ("z", lambda t: vae.VAE(vae.VAEConfig.tiny()).decode(torch.zeros(2, 3, 16, 16))),
    ("beta", lambda t: _vae_loss(beta=-1.0)),
    ("block_channels", lambda t: vae.VAEConfig(block_channels=())),
    # text
    ("texts", lambda t: text.CaptionTokenizer.from_texts(["a red circle"])([])),
    ("max_length", lambda t: text.CaptionTokenizer.from_texts(["a red circle"], max_length=1)),
    ("images", lambda t: text.TinyCLIP(text.CLIPConfig.tiny()).encode_image(torch.zeros(2, 1, 16, 16))),
    ("class_prompts", lambda t: text.zero_shot_classify(text.TinyCLIP(text.CLIPConfig.tiny()),
                                                        text.CaptionTokenizer.from_texts(["a"]),
                                                        torch.zeros(1, 3, 16, 16), [])),
    # unet
    ("sample", lambda t: unet.UNet(unet.UNetConfig.tiny())(torch.zeros(1, 3, 8, 8), 1, torch.zeros(1, 4, 16))),
    ("encoder_hidden_states", lambda t: unet.UNet(unet.UNetConfig.tiny())(torch.zeros(1, 4, 8, 8), 1,
                                                                          torch.zeros(1, 4, 7))),
    ("sample", lambda t: unet.UNet(unet.UNetConfig.tiny())(torch.zeros(1, 4, 7, 7), 1, torch.zeros(1, 4, 16))),
    ("timestep", lambda t: unet.UNet(unet.UNetConfig.tiny())(torch.zeros(2, 4, 8, 8), torch.zeros(3),
                                                             torch.zeros(2, 4, 16))),
    # lora
    ("r", lambda t: lora.LoRAConfig(r=0)),
    ("r", lambda t: lora.LoRAConfig(r=-4)),
    ("r", lambda t: lora.LoRALinear(nn.Linear(4, 4), r=0, lora_alpha=1)),
    ("target_modules", lambda t: lora.inject_lora(nn.Sequential(nn.Linear(2, 2)), lora.LoRAConfig())),
    ("path", _corrupt_safetensors),
    # training and checkpoints
    ("path", _corrupt_checkpoint),
    ("path", lambda t: train.load_checkpoint(t / "missing", {"model": nn.Linear(2, 2)})),
    ("num_steps", lambda t: train.train_loop(lambda s, g: torch.zeros(()), -1, modules={"m": nn.Linear(1, 1)},
                                             optimizer=torch.optim.SGD(nn.Linear(1, 1).parameters(), 0.1))),
    ("decay", lambda t: train.EMA(nn.Linear(2, 2), decay=1.5)),
    # data
    ("source", lambda t: data.load_image_dataset(str(t / "no_such_folder"))),
    ("source", lambda t: data.load_image_dataset("./missing/images")),
    ("image_size", lambda t: data.load_digits(image_size=0)),
    ("split", lambda t: data.load_digits(split="validation")),
    ("num_samples", lambda t: data.ShapesDataset(0)),
    ("exclude_pairs", lambda t: data.ShapesDataset(4, exclude_pairs=[("purple", "circle")])),
    ("shape", lambda t: data.render_shape("hexagon", "red", 8, (16, 16))),
]


def _ddim_ready():
    scheduler = schedulers.DDIMScheduler()
    scheduler.set_timesteps(10)
    return scheduler


def _vae_loss(beta):
    model = vae.VAE(vae.VAEConfig.tiny())
    out = model(X)
    return vae.vae_loss(out.sample, X, out.posterior, beta=beta)


@pytest.mark.parametrize("argument, call", CASES, ids=[f"{i:02d}-{a}" for i, (a, _) in enumerate(CASES)])
def test_bad_input_raises_value_error_naming_the_argument(argument, call, tmp_path):
    with pytest.raises(ValueError, match=argument):
        call(tmp_path)


CLI_CASES = [
    (["--fast", "--vae-steps", "0"], "vae_steps"),
    (["--fast", "--clip-steps", "-1"], "clip_steps"),
    (["--fast", "--steps", "0"], "num_inference_steps"),
    (["--fast", "--seed", "-3"], "seed"),
]


@pytest.mark.parametrize("argv, argument", CLI_CASES, ids=[a for _, a in CLI_CASES])
def test_demo_cli_rejects_bad_values_with_exit_code_2(argv, argument, tmp_path, capsys):
    assert demo_main(argv + ["--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert argument in err and "Traceback" not in err


def test_the_table_is_long_enough():
    assert len(CASES) + len(CLI_CASES) >= 40
