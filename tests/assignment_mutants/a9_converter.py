"""Wrong answers to assignment 9 (the converter) and the test cells that must catch them.

Parts 3 and 4 are graded with the course's versions of the parts before them; the capstone test (part 5)
uses every answer of the student, so it fails with any mistake that changes the loaded weights or the image.
"""

UNET_DOWNSAMPLER_INDEX_OFF = r'''
def unet_key_to_original(key: str, config: dict) -> str:
    L = config["layers_per_block"]
    resnet_names = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}

    def inside_resnet(rest):
        first, _, tail = rest.partition(".")
        return f"{resnet_names[first]}.{tail}"

    if (m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key)):
        i, j = int(m[2]), int(m[4])
        n = 1 + i * (L + 1) + j if m[1] == "down" else i * (L + 1) + j
        blocks = "input_blocks" if m[1] == "down" else "output_blocks"
        rest = f"0.{inside_resnet(m[5])}" if m[3] == "resnets" else f"1.{m[5]}"
        name = f"{blocks}.{n}.{rest}"
    elif (m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key)):
        name = f"input_blocks.{(int(m[1]) + 1) * (L + 1) - 1}.0.op.{m[2]}"
    elif (m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", key)):
        i = int(m[1])
        slot = 2 if config["up_block_types"][i] == "CrossAttnUpBlock2D" else 1
        name = f"output_blocks.{i * (L + 1) + L}.{slot}.{m[2]}"
    elif (m := re.match(r"mid_block\.attentions\.0\.(.+)$", key)):
        name = f"middle_block.1.{m[1]}"
    elif (m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)$", key)):
        name = f"middle_block.{2 * int(m[1])}.{inside_resnet(m[2])}"
    else:
        top = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
               "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
        module, _, tail = key.rpartition(".")
        name = f"{top[module]}.{tail}"
    return "model.diffusion_model." + name
'''

UNET_UPSAMPLER_ALWAYS_SLOT_1 = r'''
def unet_key_to_original(key: str, config: dict) -> str:
    L = config["layers_per_block"]
    resnet_names = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}

    def inside_resnet(rest):
        first, _, tail = rest.partition(".")
        return f"{resnet_names[first]}.{tail}"

    if (m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key)):
        i, j = int(m[2]), int(m[4])
        n = 1 + i * (L + 1) + j if m[1] == "down" else i * (L + 1) + j
        blocks = "input_blocks" if m[1] == "down" else "output_blocks"
        rest = f"0.{inside_resnet(m[5])}" if m[3] == "resnets" else f"1.{m[5]}"
        name = f"{blocks}.{n}.{rest}"
    elif (m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key)):
        name = f"input_blocks.{(int(m[1]) + 1) * (L + 1)}.0.op.{m[2]}"
    elif (m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", key)):
        i = int(m[1])
        slot = 1
        name = f"output_blocks.{i * (L + 1) + L}.{slot}.{m[2]}"
    elif (m := re.match(r"mid_block\.attentions\.0\.(.+)$", key)):
        name = f"middle_block.1.{m[1]}"
    elif (m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)$", key)):
        name = f"middle_block.{2 * int(m[1])}.{inside_resnet(m[2])}"
    else:
        top = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
               "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
        module, _, tail = key.rpartition(".")
        name = f"{top[module]}.{tail}"
    return "model.diffusion_model." + name
'''

UNET_CONV1_NAMED_AS_CONV2 = r'''
def unet_key_to_original(key: str, config: dict) -> str:
    L = config["layers_per_block"]
    resnet_names = {"norm1": "in_layers.0", "conv1": "out_layers.3", "time_emb_proj": "emb_layers.1",
                    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}

    def inside_resnet(rest):
        first, _, tail = rest.partition(".")
        return f"{resnet_names[first]}.{tail}"

    if (m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key)):
        i, j = int(m[2]), int(m[4])
        n = 1 + i * (L + 1) + j if m[1] == "down" else i * (L + 1) + j
        blocks = "input_blocks" if m[1] == "down" else "output_blocks"
        rest = f"0.{inside_resnet(m[5])}" if m[3] == "resnets" else f"1.{m[5]}"
        name = f"{blocks}.{n}.{rest}"
    elif (m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key)):
        name = f"input_blocks.{(int(m[1]) + 1) * (L + 1)}.0.op.{m[2]}"
    elif (m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", key)):
        i = int(m[1])
        slot = 2 if config["up_block_types"][i] == "CrossAttnUpBlock2D" else 1
        name = f"output_blocks.{i * (L + 1) + L}.{slot}.{m[2]}"
    elif (m := re.match(r"mid_block\.attentions\.0\.(.+)$", key)):
        name = f"middle_block.1.{m[1]}"
    elif (m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)$", key)):
        name = f"middle_block.{2 * int(m[1])}.{inside_resnet(m[2])}"
    else:
        top = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
               "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
        module, _, tail = key.rpartition(".")
        name = f"{top[module]}.{tail}"
    return "model.diffusion_model." + name
'''

VAE_DECODER_LEVELS_NOT_REVERSED = r'''
def vae_key_to_original(key: str, config: dict) -> str:
    n = len(config["block_out_channels"])
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    name = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    name = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", name)
    name = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", name)
    name = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{int(m[1])}.block.", name)
    name = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.upsample.",
                  name)
    name = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", name)
    if (m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(to_out\.0|\w+)\.(\w+)$", name)):
        name = f"{m[1]}.mid.attn_1.{attention[m[2]]}.{m[3]}"
    return "first_stage_model." + name
'''

VAE_ATTENTION_NAMES_KEPT = r'''
def vae_key_to_original(key: str, config: dict) -> str:
    n = len(config["block_out_channels"])
    attention = {"group_norm": "norm", "to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out.0": "proj_out"}
    name = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    name = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", name)
    name = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", name)
    name = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.block.", name)
    name = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.upsample.",
                  name)
    name = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", name)
    if (m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(to_out\.0|\w+)\.(\w+)$", name)):
        name = f"{m[1]}.mid.attn_1.{attention[m[2]]}.{m[3]}"
    return "first_stage_model." + name
'''

CONVERT_KEEPS_1X1_SHAPE = r'''
def convert_single_file(checkpoint: dict, expected_keys: dict, configs: dict) -> dict:
    original_name = {
        "unet": lambda key: unet_key_to_original(key, configs["unet"]),
        "vae": lambda key: vae_key_to_original(key, configs["vae"]),
        "text_encoder": lambda key: "cond_stage_model.transformer.text_model." + key,
    }
    converted = {}
    for component, keys in expected_keys.items():
        state = {}
        for key in keys:
            tensor = checkpoint[original_name[component](key)]
            if component == "vae" and tensor.ndim == 4 and ".mid.attn_1." in original_name[component](key):
                pass
            state[key] = tensor
        converted[component] = state
    return converted
'''

CONVERT_TEXT_WITHOUT_TEXT_MODEL = r'''
def convert_single_file(checkpoint: dict, expected_keys: dict, configs: dict) -> dict:
    original_name = {
        "unet": lambda key: unet_key_to_original(key, configs["unet"]),
        "vae": lambda key: vae_key_to_original(key, configs["vae"]),
        "text_encoder": lambda key: "cond_stage_model.transformer." + key,
    }
    converted = {}
    for component, keys in expected_keys.items():
        state = {}
        for key in keys:
            tensor = checkpoint[original_name[component](key)]
            if component == "vae" and tensor.ndim == 4 and ".mid.attn_1." in original_name[component](key):
                tensor = tensor[:, :, 0, 0]  # 1x1 conv (C, C, 1, 1) -> linear (C, C)
            state[key] = tensor
        converted[component] = state
    return converted
'''

GENERATE_CONDITIONAL_FIRST = r'''
@torch.no_grad()
def generate(unet, vae, text_encoder, tokenizer, scheduler, prompt: str, generator: torch.Generator,
             num_inference_steps: int, guidance_scale: float) -> torch.Tensor:
    ids = tokenizer([prompt, ""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    context = text_encoder(ids).last_hidden_state  # (2, 77, D): unconditional first
    scheduler.set_timesteps(num_inference_steps)
    size = unet.config.sample_size
    x = torch.randn((1, unet.config.in_channels, size, size), generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps_uncond, eps_cond = unet(torch.cat([x, x]), t, context).chunk(2)
        eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        x = scheduler.step(eps, t, x).prev_sample
    image = vae.decode(x / vae.config.scaling_factor)
    return (image / 2 + 0.5).clamp(0, 1)
'''

GENERATE_WITHOUT_SCALING_FACTOR = r'''
@torch.no_grad()
def generate(unet, vae, text_encoder, tokenizer, scheduler, prompt: str, generator: torch.Generator,
             num_inference_steps: int, guidance_scale: float) -> torch.Tensor:
    ids = tokenizer(["", prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    context = text_encoder(ids).last_hidden_state  # (2, 77, D): unconditional first
    scheduler.set_timesteps(num_inference_steps)
    size = unet.config.sample_size
    x = torch.randn((1, unet.config.in_channels, size, size), generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps_uncond, eps_cond = unet(torch.cat([x, x]), t, context).chunk(2)
        eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        x = scheduler.step(eps, t, x).prev_sample
    image = vae.decode(x)
    return (image / 2 + 0.5).clamp(0, 1)
'''

GENERATE_GUIDANCE_FROM_CONDITIONAL = r'''
@torch.no_grad()
def generate(unet, vae, text_encoder, tokenizer, scheduler, prompt: str, generator: torch.Generator,
             num_inference_steps: int, guidance_scale: float) -> torch.Tensor:
    ids = tokenizer(["", prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    context = text_encoder(ids).last_hidden_state  # (2, 77, D): unconditional first
    scheduler.set_timesteps(num_inference_steps)
    size = unet.config.sample_size
    x = torch.randn((1, unet.config.in_channels, size, size), generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps_uncond, eps_cond = unet(torch.cat([x, x]), t, context).chunk(2)
        eps = eps_cond + guidance_scale * (eps_cond - eps_uncond)
        x = scheduler.step(eps, t, x).prev_sample
    image = vae.decode(x / vae.config.scaling_factor)
    return (image / 2 + 0.5).clamp(0, 1)
'''

LOAD_CKPT_WITHOUT_STATE_DICT = r'''
def load_checkpoint(path, configs: dict):
    path = Path(path)
    modules = build_modules(configs)
    if path.is_dir():
        files = {"unet": "unet/diffusion_pytorch_model.safetensors", "vae": "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder": "text_encoder/model.safetensors"}
        states = {c: load_file(path / f) for c, f in files.items()}
        states["text_encoder"] = {k.removeprefix("text_model."): v for k, v in states["text_encoder"].items()
                                  if not k.endswith("position_ids")}
    else:
        if path.suffix == ".safetensors":
            checkpoint = load_file(path)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        expected = {c: list(m.state_dict()) for c, m in modules.items()}
        states = convert_single_file(checkpoint, expected, configs)
    for component in ("unet", "vae", "text_encoder"):
        modules[component].load_state_dict(states[component], strict=True)
        modules[component].eval()
    return modules["unet"], modules["vae"], modules["text_encoder"]
'''

LOAD_FOLDER_KEEPS_TEXT_MODEL_PREFIX = r'''
def load_checkpoint(path, configs: dict):
    path = Path(path)
    modules = build_modules(configs)
    if path.is_dir():
        files = {"unet": "unet/diffusion_pytorch_model.safetensors", "vae": "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder": "text_encoder/model.safetensors"}
        states = {c: load_file(path / f) for c, f in files.items()}
    else:
        if path.suffix == ".safetensors":
            checkpoint = load_file(path)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        expected = {c: list(m.state_dict()) for c, m in modules.items()}
        states = convert_single_file(checkpoint, expected, configs)
    for component in ("unet", "vae", "text_encoder"):
        modules[component].load_state_dict(states[component], strict=True)
        modules[component].eval()
    return modules["unet"], modules["vae"], modules["text_encoder"]
'''

GENERATE_CALLS_THE_COURSE = r'''
from course_lib.models.convert import SDModules, generate as _course_generate


@torch.no_grad()
def generate(unet, vae, text_encoder, tokenizer, scheduler, prompt, generator, num_inference_steps, guidance_scale):
    modules = SDModules(unet, vae, text_encoder, tokenizer, scheduler, CONFIGS, [])
    return _course_generate(modules, prompt, generator, num_inference_steps, guidance_scale)
'''

CAPSTONE = ["test_capstone"]
MUTANTS = [
    {"name": "unet_downsampler_index_off", "replace": {"unet_keys": UNET_DOWNSAMPLER_INDEX_OFF},
     "expect_fail": ["test_unet_keys", *CAPSTONE]},
    # the tiny SD's only upsampler sits in a level without attention: only SD v1.5's layout (hidden) shows it
    {"name": "unet_upsampler_always_slot_1", "replace": {"unet_keys": UNET_UPSAMPLER_ALWAYS_SLOT_1},
     "expect_fail": ["test_unet_keys"]},
    {"name": "unet_conv1_named_as_conv2", "replace": {"unet_keys": UNET_CONV1_NAMED_AS_CONV2},
     "expect_fail": ["test_unet_keys", *CAPSTONE]},
    {"name": "vae_decoder_levels_not_reversed", "replace": {"vae_keys": VAE_DECODER_LEVELS_NOT_REVERSED},
     "expect_fail": ["test_vae_keys", *CAPSTONE]},
    {"name": "vae_attention_names_kept", "replace": {"vae_keys": VAE_ATTENTION_NAMES_KEPT},
     "expect_fail": ["test_vae_keys", *CAPSTONE]},
    {"name": "convert_keeps_1x1_shape", "replace": {"convert_single_file": CONVERT_KEEPS_1X1_SHAPE},
     "expect_fail": ["test_convert", *CAPSTONE]},
    {"name": "convert_text_without_text_model", "replace": {"convert_single_file": CONVERT_TEXT_WITHOUT_TEXT_MODEL},
     "expect_fail": ["test_convert", *CAPSTONE]},
    {"name": "generate_conditional_first", "replace": {"generate": GENERATE_CONDITIONAL_FIRST},
     "expect_fail": ["test_generate", *CAPSTONE]},
    {"name": "generate_without_scaling_factor", "replace": {"generate": GENERATE_WITHOUT_SCALING_FACTOR},
     "expect_fail": ["test_generate", *CAPSTONE]},
    {"name": "generate_guidance_from_conditional", "replace": {"generate": GENERATE_GUIDANCE_FROM_CONDITIONAL},
     "expect_fail": ["test_generate", *CAPSTONE]},
    {"name": "generate_calls_the_course", "replace": {"generate": GENERATE_CALLS_THE_COURSE},
     "expect_fail": ["test_generate", *CAPSTONE]},
    {"name": "load_ckpt_without_state_dict", "replace": {"load_checkpoint": LOAD_CKPT_WITHOUT_STATE_DICT},
     "expect_fail": CAPSTONE},
    # the tiny folder was written by transformers 5 (no prefix): the hidden transformers-4 folder shows it
    {"name": "load_folder_keeps_text_model_prefix", "replace": {"load_checkpoint": LOAD_FOLDER_KEEPS_TEXT_MODEL_PREFIX},
     "expect_fail": CAPSTONE},
]
