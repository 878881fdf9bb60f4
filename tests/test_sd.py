"""Contracts of course_lib.sd: SD v1.5 facts, the tiny offline twin, loading, precision (and LoRA training)."""
import json

import pytest
import torch
from torch import nn

from course_lib.sd import (DEFAULT_MODEL_ID, DEFAULT_REVISION, SD15_SCHEDULER, SD15_TOKENIZER,
                           ModelNotAvailableError, build_tiny_sd, count_parameters, load_pipeline,
                           load_sd_components, pick_precision, sd15_config, sd15_empty_model, tiny_tokenizer_files)
from course_lib.sd.tiny import TOY_WORDS, _apply_merges, _byte_symbols, _word_symbols

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models gain nothing from threads, and on a shared 2-core machine OpenMP spin-waits make them ~100x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd", seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return load_sd_components(tiny_folder)


# ---------------------------------------------------------------- SD v1.5 facts (meta device, no memory)

# Published sizes of SD v1.5's components (model card / diffusers docs): 859.52M, 83.65M, 123.06M.
@pytest.mark.parametrize("name, published", [("unet", 859.52e6), ("vae", 83.65e6), ("text_encoder", 123.06e6)])
def test_sd15_parameter_counts_match_published_sizes(name, published):
    model = sd15_empty_model(name)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert count_parameters(model) == pytest.approx(published, rel=0.01)


def test_sd15_configs_fit_together():
    unet, vae, text = sd15_config("unet"), sd15_config("vae"), sd15_config("text_encoder")
    assert unet["cross_attention_dim"] == text["hidden_size"] == 768          # UNet attends to CLIP tokens
    assert unet["in_channels"] == vae["latent_channels"] == 4
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    assert factor == 8 and unet["sample_size"] * factor == vae["sample_size"] == 512
    assert text["max_position_embeddings"] == SD15_TOKENIZER["model_max_length"] == 77
    assert text["vocab_size"] == SD15_TOKENIZER["vocab_size"] == SD15_TOKENIZER["eos_token_id"] + 1
    assert vae["scaling_factor"] == 0.18215 and text["hidden_act"] == "quick_gelu"
    assert SD15_SCHEDULER["beta_schedule"] == "scaled_linear"


def test_sd15_config_returns_a_fresh_copy():
    sd15_config("unet")["cross_attention_dim"] = 1
    assert sd15_config("unet")["cross_attention_dim"] == 768


def _lora_count_closed_form(r: int, ctx: int = 768) -> int:
    """SD v1.5 UNet: transformer blocks at width d: 5 at 320, 5 at 640, 6 at 1280 (2 down + 3 up per level,
    plus the mid block). Per block: self-attn q,k,v,out are d->d; cross-attn q,out are d->d, k,v are ctx->d."""
    per_block = lambda d: r * (4 * 2 * d + 2 * 2 * d + 2 * (ctx + d))  # noqa: E731
    return 5 * per_block(320) + 5 * per_block(640) + 6 * per_block(1280)


def test_sd15_lora_rank4_count_two_ways():
    r = 4
    unet = sd15_empty_model("unet")
    by_layers = sum(r * (m.in_features + m.out_features) for name, m in unet.named_modules()
                    if isinstance(m, nn.Linear) and name.endswith(ATTENTION_PROJECTIONS))
    from peft import LoraConfig, inject_adapter_in_model
    with torch.device("meta"):
        inject_adapter_in_model(LoraConfig(r=r, lora_alpha=r, target_modules=list(ATTENTION_PROJECTIONS)), unet)
    injected = sum(p.numel() for name, p in unet.named_parameters() if "lora_" in name)
    assert by_layers == injected == _lora_count_closed_form(r) == 797_184


# ---------------------------------------------------------------- tiny SD: tokenizer

def test_tiny_tokenizer_every_toy_word_is_one_token(tiny):
    tok = tiny.tokenizer
    for word in TOY_WORDS:
        ids = tok(word).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.convert_ids_to_tokens(ids[1:-1]) == [word + "</w>"], word
    assert tok.bos_token == "<|startoftext|>" and tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert tok.model_max_length == 77
    # CLIP's layout: the two special tokens are the last two ids
    assert (tok.bos_token_id, tok.eos_token_id) == (len(tok) - 2, len(tok) - 1)


def test_tiny_tokenizer_handles_any_text_and_pads_to_77(tiny):
    tok = tiny.tokenizer
    batch = tok(["a red circle", "Zebra, café & 42!"], padding="max_length", max_length=77, truncation=True,
                return_tensors="pt")
    assert batch.input_ids.shape == (2, 77)
    assert tok.unk_token_id not in batch.input_ids[1, 1:].tolist()[:12]
    assert tok.decode(batch.input_ids[1], skip_special_tokens=True) == "zebra , café & 4 2 !"


def test_own_bpe_matches_clip_tokenizer(tiny):
    """Our BPE simulation (used to choose the merges) agrees with the tokenizers library on other words."""
    vocab, merges = tiny_tokenizer_files()
    ranks = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
    alphabet = _byte_symbols()
    assert len(set(alphabet)) == 256 and all(s.isprintable() and not s.isspace() for s in alphabet)
    for word in ["reds", "circles", "blueberry", "starred", "ringo", "ab", "x"]:
        expected = tiny.tokenizer.convert_ids_to_tokens(tiny.tokenizer(word).input_ids[1:-1])
        assert _apply_merges(_word_symbols(word, alphabet), ranks) == expected, word


# ---------------------------------------------------------------- tiny SD: folder, loading, pipeline

def test_tiny_folder_has_diffusers_layout(tiny_folder):
    names = {p.name for p in tiny_folder.iterdir()}
    assert {"model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= names
    index = json.loads((tiny_folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["safety_checker"] == [None, None]
    assert {"vocab.json", "merges.txt"} <= {p.name for p in (tiny_folder / "tokenizer").iterdir()}
    assert (tiny_folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_tiny_components_have_the_real_classes_and_shapes(tiny):
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    assert isinstance(tiny.unet, UNet2DConditionModel) and isinstance(tiny.vae, AutoencoderKL)
    assert isinstance(tiny.text_encoder, CLIPTextModel) and isinstance(tiny.tokenizer, CLIPTokenizer)
    assert isinstance(tiny.scheduler, PNDMScheduler)
    for key in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "steps_offset"):
        assert tiny.scheduler.config[key] == SD15_SCHEDULER[key]
    assert tiny.vae_scale_factor == 8
    with torch.no_grad():
        image = torch.zeros(1, 3, 64, 64)
        z = tiny.vae.encode(image).latent_dist.mean                                  # (1, 4, 8, 8)
        assert z.shape == (1, 4, tiny.unet.config.sample_size, tiny.unet.config.sample_size)
        ids = tiny.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        context = tiny.text_encoder(ids).last_hidden_state                           # (1, 77, 32)
        assert context.shape == (1, 77, tiny.unet.config.cross_attention_dim)
        eps = tiny.unet(z, torch.tensor([500]), context).sample
        assert eps.shape == z.shape and torch.isfinite(eps).all()
    assert not tiny.unet.training and not tiny.text_encoder.training


def test_pipeline_from_pretrained_and_our_loader_agree(tiny_folder, tiny):
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(tiny_folder, local_files_only=True)
    assert pipe.safety_checker is None
    for ours, theirs in [(tiny.unet, pipe.unet), (tiny.vae, pipe.vae), (tiny.text_encoder, pipe.text_encoder)]:
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pipe.set_progress_bar_config(disable=True)
    ours = load_pipeline(tiny_folder)
    ours.set_progress_bar_config(disable=True)
    run = lambda p: p("a red circle", num_inference_steps=2, guidance_scale=3.0, output_type="np",  # noqa: E731
                      generator=torch.Generator().manual_seed(1)).images
    img = run(pipe)
    assert img.shape == (1, 64, 64, 3)
    assert (run(ours) == img).all()


def test_build_tiny_sd_is_seeded_and_leaves_global_rng_alone(tmp_path, tiny):
    state = torch.random.get_rng_state()
    a = load_sd_components(build_tiny_sd(tmp_path / "a", seed=0))
    b = load_sd_components(build_tiny_sd(tmp_path / "b", seed=1))
    assert torch.equal(torch.random.get_rng_state(), state)
    w = lambda c: c.unet.conv_in.weight  # noqa: E731
    assert torch.equal(w(a), w(tiny)) and not torch.equal(w(b), w(tiny))


def test_load_with_dtype_and_device(tiny_folder):
    c = load_sd_components(tiny_folder, torch_dtype=torch.bfloat16, device="cpu")
    for model in (c.unet, c.vae, c.text_encoder):
        p = next(model.parameters())
        assert p.dtype == torch.bfloat16 and p.device.type == "cpu"


def test_hub_id_without_network_gives_a_clear_error(monkeypatch):
    assert DEFAULT_MODEL_ID == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert len(DEFAULT_REVISION) == 40 and int(DEFAULT_REVISION, 16) >= 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # conftest sets it too; online, the hub client retries for ~30 s
    with pytest.raises(ModelNotAvailableError, match="model_id_or_path .*stable-diffusion-v1-5") as info:
        load_sd_components()
    assert isinstance(info.value, OSError) and isinstance(info.value, ValueError)
    assert "build_tiny_sd" in str(info.value)


# ---------------------------------------------------------------- precision rule (mocked CUDA)

@pytest.mark.parametrize("capability, mixed, dtype, scaler", [
    ((7, 5), "fp16", torch.float16, True),     # T4 (Colab free tier)
    ((7, 0), "fp16", torch.float16, True),     # V100
    ((8, 0), "bf16", torch.bfloat16, False),   # A100
    ((8, 9), "bf16", torch.bfloat16, False),   # L4
    ((9, 0), "bf16", torch.bfloat16, False),   # H100
])
def test_pick_precision_on_cuda(monkeypatch, capability, mixed, dtype, scaler):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    p = pick_precision("cuda:0")
    assert (p.mixed_precision, p.weight_dtype, p.autocast_dtype, p.use_grad_scaler) == (mixed, dtype, dtype, scaler)
    assert p.lora_dtype == torch.float32 and p.device == torch.device("cuda:0")


def test_pick_precision_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    p = pick_precision()
    assert p.device == torch.device("cpu") and p.mixed_precision == "no"
    assert p.weight_dtype == p.lora_dtype == torch.float32 and p.autocast_dtype is None
    assert not p.grad_scaler().is_enabled()
    x = torch.randn(2, 3)
    with p.autocast():
        assert (x @ x.T).dtype == torch.float32


def test_pick_precision_default_device_is_cuda_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert pick_precision().device.type == "cuda" and pick_precision().mixed_precision == "fp16"


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, argname", [
    (lambda tmp: sd15_config("clip"), "name"),
    (lambda tmp: sd15_empty_model("tokenizer"), "name"),
    (lambda tmp: count_parameters("unet"), "module"),
    (lambda tmp: pick_precision("gpu"), "device"),
    (lambda tmp: pick_precision(3.5), "device"),
    (lambda tmp: load_sd_components(tmp / "missing-folder"), "model_id_or_path"),
    (lambda tmp: load_sd_components(tmp), "model_id_or_path"),           # a folder without the subfolders
    (lambda tmp: load_sd_components(42), "model_id_or_path"),
    (lambda tmp: load_sd_components(DEFAULT_MODEL_ID, revision=""), "revision"),
    (lambda tmp: load_sd_components(DEFAULT_MODEL_ID, torch_dtype=torch.int8), "torch_dtype"),
    (lambda tmp: load_sd_components(DEFAULT_MODEL_ID, device="gpu"), "device"),
    (lambda tmp: load_pipeline(tmp / "missing-folder"), "model_id_or_path"),
    (lambda tmp: build_tiny_sd(tmp, seed=-1), "seed"),
    (lambda tmp: build_tiny_sd(tmp, seed=1.0), "seed"),
    (lambda tmp: build_tiny_sd(None), "folder"),
    (lambda tmp: build_tiny_sd((tmp / "x.txt").write_text("x") and tmp / "x.txt"), "folder"),
    (lambda tmp: build_tiny_sd(tmp.parent), "folder"),                  # not empty
    (lambda tmp: tiny_tokenizer_files(["Red"]), "words"),
    (lambda tmp: tiny_tokenizer_files(["two words"]), "words"),
])
def test_bad_input_raises_value_error_naming_the_argument(tmp_path, call, argname):
    with pytest.raises(ValueError, match=argname):
        call(tmp_path)
