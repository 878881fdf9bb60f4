"""Contracts of course_lib.sd: SD v1.5 facts, the tiny offline twin, loading, precision (and LoRA training)."""
import json
import os

import pytest
import torch
from torch import nn

from course_lib.sd import (DEFAULT_MODEL_ID, DEFAULT_REVISION, LORA_WEIGHT_NAME, SD15_SCHEDULER, SD15_TOKENIZER,
                           LoRATrainingConfig, ModelNotAvailableError, before_after_grid, build_tiny_sd,
                           count_parameters, encode_images, encode_prompts, generate, load_pipeline,
                           load_sd_components, min_snr_weights, noise_prediction_loss, pick_precision,
                           precision_for, sd15_config, sd15_empty_model, tiny_tokenizer_files, train_lora)
from course_lib.sd.components import SDComponents
from course_lib.sd.lora_training import _unscale_or_skip, sample_indices
from course_lib.sd.tiny import TOY_WORDS, _apply_merges, _byte_symbols, _word_symbols
from _numerics import TEST_THREADS  # tests/_numerics.py

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models gain nothing from threads, and on a shared 2-core machine OpenMP spin-waits make them ~100x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
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


def test_tiny_tokenizer_covers_the_words_of_the_shapes_world(tiny):
    from course_lib.data import VOCABULARY
    for word in VOCABULARY:
        assert len(tiny.tokenizer(word).input_ids) == 3, word   # BOS, the word, EOS


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


def _fake_hub_cache(tiny_folder, cache, repo_id: str, revision: str) -> None:
    """A Hugging Face hub cache (models--owner--name/snapshots/<commit>, refs/main) holding the tiny SD, as
    from_pretrained leaves it after a download: offline, a hub id then loads from this cache only."""
    import shutil
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(tiny_folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def test_hub_id_loads_from_cache_dir_offline(tiny_folder, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    revision = "0123456789abcdef0123456789abcdef01234567"
    _fake_hub_cache(tiny_folder, tmp_path / "cache", "course/tiny-sd", revision)
    loaded = load_sd_components("course/tiny-sd", revision=revision, cache_dir=tmp_path / "cache")
    assert torch.equal(loaded.unet.conv_in.weight, tiny.unet.conv_in.weight)
    with pytest.raises(ModelNotAvailableError):                      # the default cache does not have it
        load_sd_components("course/tiny-sd", revision=revision)


def test_components_to_moves_without_the_dtype_warning(tiny_folder):
    """diffusers warns "Casting directly with `to()`..." whenever dtype= is passed, even dtype=None."""
    import logging
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    diffusers_logger = logging.getLogger("diffusers")  # diffusers' loggers do not propagate to the root logger
    diffusers_logger.addHandler(handler)
    try:
        components = load_sd_components(tiny_folder)
        assert components.to("cpu") is components
        load_sd_components(tiny_folder, device="cpu")
        assert not [m for m in messages if "Casting directly" in m], messages
        components.to(dtype=torch.bfloat16)
    finally:
        diffusers_logger.removeHandler(handler)
    assert {next(m.parameters()).dtype for m in (components.unet, components.vae, components.text_encoder)} == \
        {torch.bfloat16}
    assert [m for m in messages if "Casting directly" in m]  # a real cast is still reported


def test_before_after_grid_labels_do_not_overlap_on_narrow_images(tiny_folder, tmp_path, monkeypatch):
    """64-pixel images, long prompts: the column titles are wrapped so that no two of them overlap."""
    import course_lib.viz as viz
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    figures, make_figure = [], viz._labelled_grid_figure
    monkeypatch.setattr(viz, "_labelled_grid_figure", lambda *a, **k: figures.append(make_figure(*a, **k)) or
                        figures[-1])
    prompts = ["a photo of a small red circle on a white background", "a blue square", "a green triangle at the top"]
    before_after_grid(load_pipeline(tiny_folder), prompts, [0, 1, 12], num_inference_steps=1,
                      path=tmp_path / "grid.png")
    renderer = FigureCanvasAgg(figures[0]).get_renderer()
    labels = figures[0].axes[0].get_xticklabels()
    boxes = [label.get_window_extent(renderer) for label in labels]
    assert len(boxes) == 3 and all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), [(b.x0, b.x1) for b in boxes]
    assert [label.get_text().replace("\n", " ") for label in labels] == \
        [f"{p} (seed {s})" for p, s in zip(prompts, [0, 1, 12])]


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


# ================================================================ Part B: LoRA fine-tuning on the tiny SD

CAPTION = "a red circle"


@pytest.fixture(scope="module")
def one_image(tmp_path_factory):
    """An image folder with one 64x64 red circle (the toy world of course_lib.data)."""
    from course_lib.data import shapes_batch, write_image_folder
    batch = shapes_batch(1, seed=0, image_size=64, pairs=[("red", "circle")], caption_style="short")
    assert batch["caption"] == [CAPTION]
    return write_image_folder(tmp_path_factory.mktemp("data") / "images", batch["image"], batch["caption"]), batch


def _config(folder, out, **overrides):
    settings = dict(dataset=str(folder), output_dir=str(out), resolution=64, max_train_steps=8, train_batch_size=4,
                    learning_rate=1e-2, checkpoint_every=100, seed=0)
    return LoRATrainingConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def trained(tiny_folder, one_image, tmp_path_factory):
    components = load_sd_components(tiny_folder)
    out = tmp_path_factory.mktemp("run")
    result = train_lora(_config(one_image[0], out, validation_prompts=(CAPTION,), validation_every=8,
                                num_inference_steps=2, alpha=8.0), components)  # scaling alpha / r = 2
    return components, result, out


def test_train_lora_reads_model_and_dataset_through_cache_dir(tiny_folder, one_image, tmp_path, monkeypatch):
    """components=None: the hub id is loaded from cache_dir (offline), and `datasets` writes its Arrow cache there."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    revision = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "cache"
    _fake_hub_cache(tiny_folder, cache, "course/tiny-sd", revision)
    config = _config(one_image[0], tmp_path / "out", max_train_steps=1, train_batch_size=1,
                     pretrained_model_name_or_path="course/tiny-sd", revision=revision, cache_dir=str(cache))
    result = train_lora(config)
    assert result.lora_path.is_file() and len(result.losses) == 1
    assert any(p.suffix == ".arrow" for p in cache.rglob("*") if "models--" not in str(p))


def test_config_round_trips_through_json(tmp_path):
    config = _config(tmp_path / "data", tmp_path / "out", validation_prompts=["a", "b"], snr_gamma=5.0,
                     copy_checkpoints_to=tmp_path / "drive", alpha=8)
    again = LoRATrainingConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.target_modules == ("to_q", "to_k", "to_v", "to_out.0")
    assert config.checkpoint_folder == tmp_path / "out" / "checkpoints"


def test_min_snr_weights_match_diffusers_compute_snr():
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr
    scheduler = DDPMScheduler.from_config(SD15_SCHEDULER)
    t = torch.tensor([0, 10, 100, 500, 999])
    snr = compute_snr(scheduler, t)
    torch.testing.assert_close(min_snr_weights(scheduler.alphas_cumprod, t, 5.0), torch.clamp(snr, max=5.0) / snr)
    torch.testing.assert_close(min_snr_weights(scheduler.alphas_cumprod, t, 5.0, "v_prediction"),
                               torch.clamp(snr, max=5.0) / (snr + 1))
    assert min_snr_weights(scheduler.alphas_cumprod, t, 5.0)[-1] == 1.0  # noisy timesteps keep weight 1


def test_noise_prediction_loss_is_the_ldm_objective(tiny):
    """Against the closed form z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, written out here."""
    from diffusers import DDPMScheduler
    scheduler = DDPMScheduler.from_config(tiny.scheduler.config)
    g = torch.Generator().manual_seed(0)
    z0, eps, c = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 77, 32)
    t = torch.tensor([3, 400, 950])
    abar = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, 0)[t].view(3, 1, 1, 1)
    with torch.no_grad():
        per_sample = ((tiny.unet(abar.sqrt() * z0 + (1 - abar).sqrt() * eps, t, c).sample - eps) ** 2).mean((1, 2, 3))
        loss = noise_prediction_loss(tiny.unet, scheduler, z0, c, eps, t)
        weighted = noise_prediction_loss(tiny.unet, scheduler, z0, c, eps, t, snr_gamma=1.0)
    torch.testing.assert_close(loss, per_sample.mean(), rtol=1e-5, atol=1e-6)
    snr = abar.flatten() / (1 - abar.flatten())
    torch.testing.assert_close(weighted, (per_sample * snr.clamp(max=1.0) / snr).mean(), rtol=1e-5, atol=1e-6)


def test_use_8bit_adam_needs_bitsandbytes(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail, installed or not
    with pytest.raises(ValueError, match="use_8bit_adam"):
        _config(tmp_path, tmp_path, use_8bit_adam=True)


def test_sample_indices_shuffle_each_epoch_and_depend_only_on_the_step(tmp_path):
    config = _config(tmp_path, tmp_path, train_batch_size=3, gradient_accumulation_steps=2, seed=7)
    n = 12  # one epoch = 2 updates of 2 micro-batches of 3 images
    epoch0 = [i for step in (0, 1) for micro in (0, 1) for i in sample_indices(step, micro, config, n)]
    epoch1 = [i for step in (2, 3) for micro in (0, 1) for i in sample_indices(step, micro, config, n)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n)) and epoch0 != epoch1
    assert sample_indices(3, 1, config, n) == sample_indices(3, 1, config, n)


def test_lora_steps_lower_the_loss_on_a_fixed_batch(trained, one_image):
    components, result, out = trained
    from diffusers import DDPMScheduler

    from course_lib.lora import lora_layers, set_lora_scale
    assert len(result.losses) == 8 and all(layer.lora_B.weight.abs().sum() > 0
                                           for layer in lora_layers(components.unet).values())
    scheduler = DDPMScheduler.from_config(components.scheduler.config)
    g = torch.Generator().manual_seed(123)
    images = one_image[1]["image"].repeat(16, 1, 1, 1)
    with torch.no_grad():
        z0, c = encode_images(components, images, g), encode_prompts(components, [CAPTION] * 16)
        eps, t = torch.randn(z0.shape, generator=g), torch.randint(0, 1000, (16,), generator=g)
        after = noise_prediction_loss(components.unet, scheduler, z0, c, eps, t)
        set_lora_scale(components.unet, 0.0)   # scale 0 = the frozen base model
        before = noise_prediction_loss(components.unet, scheduler, z0, c, eps, t)
        set_lora_scale(components.unet, 1.0)
    assert after < 0.99 * before, (float(before), float(after))


def test_saved_lora_loads_in_diffusers_exactly_like_our_merged_weights(trained, tiny_folder):
    from course_lib.lora import LoRAConfig, inject_lora, load_lora, merge_lora
    _, result, out = trained
    assert result.lora_path == out / LORA_WEIGHT_NAME and result.lora_path.is_file()
    theirs = load_pipeline(tiny_folder)
    theirs.load_lora_weights(out)                                  # diffusers + peft read our file
    ours = load_sd_components(tiny_folder)
    inject_lora(ours.unet, LoRAConfig(r=4, lora_alpha=8.0))
    load_lora(ours.unet, result.lora_path)
    merge_lora(ours.unet)                                          # W0 + B A alpha / r, in place
    base = load_sd_components(tiny_folder).unet
    g = torch.Generator().manual_seed(5)
    z, t, c = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([100, 700]), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        a, b, b0 = theirs.unet(z, t, c).sample, ours.unet(z, t, c).sample, base(z, t, c).sample
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (a - b0).abs().max() > 100 * (a - b).abs().max()   # the LoRA really changes the output
    ours.unet.eval()
    run = lambda pipe: generate(pipe, CAPTION, 3, num_inference_steps=2)  # noqa: E731
    torch.testing.assert_close(run(theirs), run(ours.pipeline()), rtol=0, atol=1e-4)


def test_validation_images_are_saved_with_fixed_seeds(trained):
    components, result, out = trained
    assert list(result.validation_images) == [8] and result.validation_images[8].shape == (1, 3, 64, 64)
    assert (out / "validation" / "step-00000008.png").is_file()
    again = generate(components.pipeline(), [CAPTION], [0], num_inference_steps=2, height=64, width=64)
    assert torch.equal(again, result.validation_images[8])
    assert json.loads((out / "training_config.json").read_text())["max_train_steps"] == 8


def test_generate_lora_scale_zero_is_the_base_model_and_seeds_fix_images(trained, tiny_folder, tmp_path):
    components, _, _ = trained
    pipe, base = components.pipeline(), load_pipeline(tiny_folder)
    prompts, seeds = [CAPTION, "a blue square"], [1, 2]
    without = generate(pipe, prompts, seeds, lora_scale=0.0, num_inference_steps=2)
    assert without.shape == (2, 3, 64, 64) and without.min() >= -1 and without.max() <= 1
    torch.testing.assert_close(without, generate(base, prompts, seeds, num_inference_steps=2), rtol=0, atol=1e-6)
    grid = before_after_grid(pipe, prompts, seeds, num_inference_steps=2, path=tmp_path / "grid.png")
    assert grid.shape == (4, 3, 64, 64) and (tmp_path / "grid.png").is_file()
    torch.testing.assert_close(grid[:2], without, rtol=0, atol=1e-6)
    assert not torch.allclose(grid[2:], without, atol=1e-3)
    assert torch.equal(grid[2:], generate(pipe, prompts, seeds, num_inference_steps=2))  # scale restored to 1


def test_gradient_checkpointing_gives_the_same_gradients(tiny_folder):
    from course_lib.lora import LoRAConfig, inject_lora, lora_parameters
    grads = []
    for checkpointing in (False, True):
        unet = load_sd_components(tiny_folder).unet
        inject_lora(unet, LoRAConfig(r=4), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for p in lora_parameters(unet):
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
        if checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        g = torch.Generator().manual_seed(1)
        unet(torch.randn(2, 4, 8, 8, generator=g), torch.tensor([5, 500]), torch.randn(2, 77, 32, generator=g)
             ).sample.square().mean().backward()
        grads.append([p.grad.clone() for p in lora_parameters(unet)])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(*grads))


def test_fp16_grad_scaler_unscales_and_skips_overflowing_updates():
    p = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    scaler.scale((2 * p).sum()).backward()
    _unscale_or_skip(scaler, optimizer, [p])
    assert torch.equal(p.grad, torch.full((3,), 2.0)) and scaler.get_scale() == 2.0 ** 10
    optimizer.zero_grad()
    scaler.scale((p * float("inf")).sum()).backward()
    _unscale_or_skip(scaler, optimizer, [p])
    assert p.grad is None and scaler.get_scale() == 2.0 ** 9   # update skipped, loss scale halved


def test_fp16_training_on_cpu_runs_with_scaler_state_checkpointed(tiny_folder, one_image, tmp_path):
    config = _config(one_image[0], tmp_path, max_train_steps=2, train_batch_size=1, mixed_precision="fp16",
                     gradient_checkpointing=True)
    components = load_sd_components(tiny_folder)
    result = train_lora(config, components)
    assert components.unet.conv_in.weight.dtype == torch.float16
    from course_lib.lora import lora_parameters
    assert all(p.dtype == torch.float32 for p in lora_parameters(components.unet))
    assert (result.checkpoint / "grad_scaler.safetensors").is_file()
    assert all(torch.isfinite(torch.tensor(result.losses)))


_CHILD = """
import json, sys, time, torch
torch.set_num_threads(1)
from course_lib.sd import LoRATrainingConfig, load_sd_components, train_lora
config = LoRATrainingConfig.from_dict(json.loads(sys.argv[1]))
# from update 4 on, wait a second after each update: time enough to kill it mid-run
train_lora(config, load_sd_components(sys.argv[2]), callback=lambda step, loss: time.sleep(1.0 if step >= 4 else 0))
"""


def test_killed_run_resumes_from_the_copied_checkpoint_bit_for_bit(tiny_folder, one_image, tmp_path):
    """Kill a training process mid-run, lose its local checkpoints (a Colab VM reset), resume from the copy
    (the "Google Drive" folder): the final LoRA weights equal those of an uninterrupted run exactly."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from course_lib._io import load_safetensors
    settings = dict(max_train_steps=8, train_batch_size=1, checkpoint_every=2, learning_rate=1e-3)
    reference = train_lora(_config(one_image[0], tmp_path / "reference", **settings), load_sd_components(tiny_folder))

    config = _config(one_image[0], tmp_path / "run", copy_checkpoints_to=str(tmp_path / "drive"), **settings)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(config.to_dict()), str(tiny_folder)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (tmp_path / "drive" / "checkpoint-00000004").is_dir():
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the child never wrote checkpoint 4"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert not (tmp_path / "run" / LORA_WEIGHT_NAME).exists()       # it really died before the end
    shutil.rmtree(config.checkpoint_folder)                          # the VM's disk is gone, the copy is not

    resumed = train_lora(config, load_sd_components(tiny_folder))
    assert 4 <= resumed.resumed_from < 8
    a, b = load_safetensors(reference.lora_path), load_safetensors(resumed.lora_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.losses == reference.losses
    copies = sorted(p.name for p in (tmp_path / "drive").iterdir() if p.name.startswith("checkpoint-"))
    assert copies == ["checkpoint-00000006", "checkpoint-00000008"]  # keep_last=2, like the local folder
    local, copied = (config.checkpoint_folder / "checkpoint-00000008", tmp_path / "drive" / "checkpoint-00000008")
    assert (local / "manifest.json").read_text() == (copied / "manifest.json").read_text()


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
    (lambda tmp: load_sd_components(DEFAULT_MODEL_ID, cache_dir=3), "cache_dir"),
    (lambda tmp: SDComponents(None, None, None, None, None).to(dtype=torch.int8), "dtype"),
    (lambda tmp: SDComponents(None, None, None, None, None).to(device="gpu"), "device"),
    (lambda tmp: load_sd_components(DEFAULT_MODEL_ID, cache_dir=""), "cache_dir"),
    (lambda tmp: build_tiny_sd(tmp, seed=-1), "seed"),
    (lambda tmp: build_tiny_sd(tmp, seed=1.0), "seed"),
    (lambda tmp: build_tiny_sd(None), "folder"),
    (lambda tmp: build_tiny_sd((tmp / "x.txt").write_text("x") and tmp / "x.txt"), "folder"),
    (lambda tmp: build_tiny_sd(tmp.parent), "folder"),                  # not empty
    (lambda tmp: tiny_tokenizer_files(["Red"]), "words"),
    (lambda tmp: tiny_tokenizer_files(["two words"]), "words"),
    (lambda tmp: precision_for("cpu", "fp8"), "mixed_precision"),
    (lambda tmp: min_snr_weights(torch.rand(10), torch.tensor([1]), 0.0), "snr_gamma"),
    (lambda tmp: min_snr_weights(torch.rand(10), torch.tensor([1]), 5.0, "sample"), "prediction_type"),
    (lambda tmp: train_lora("config.json"), "config"),
    (lambda tmp: train_lora(_config(tmp, tmp), components="unet"), "components"),
    (lambda tmp: train_lora(_config(tmp, tmp), callback=3), "callback"),
    (lambda tmp: generate("pipe", "a red circle", 0), "pipe"),
    (lambda tmp: before_after_grid(object(), [], 0), "prompts"),
    (lambda tmp: LoRATrainingConfig.from_dict({"dataset": "d", "output_dir": "o", "lr": 1}), "lr"),
    (lambda tmp: LoRATrainingConfig.from_dict([]), "d"),
    *[(lambda tmp, k=key, v=value: _config(tmp, tmp, **{k: v}), key) for key, value in [
        ("dataset", ""), ("output_dir", None), ("resolution", 60), ("resolution", 0), ("rank", 0), ("alpha", -1.0),
        ("target_modules", "to_q"), ("learning_rate", 0.0), ("lr_scheduler", "linear"), ("lr_warmup_steps", 9),
        ("max_train_steps", 0), ("train_batch_size", 0), ("gradient_accumulation_steps", 1.5),
        ("max_grad_norm", -1.0), ("gradient_checkpointing", "yes"), ("snr_gamma", 0.0),
        ("mixed_precision", "fp8"), ("validation_prompts", "a red circle"), ("validation_every", 0),
        ("num_inference_steps", 0), ("checkpoint_every", 0), ("keep_last", 0), ("copy_checkpoints_to", ""),
        ("seed", -1), ("resume", "earliest"), ("device", "gpu"), ("revision", ""), ("dataset_split", ""),
        ("adam_weight_decay", -0.1), ("guidance_scale", -1.0), ("cache_dir", ""), ("cache_dir", 3)]],
    (lambda tmp: _config(tmp, tmp, validation_every=5), "validation_every"),   # without prompts
])
def test_bad_input_raises_value_error_naming_the_argument(tmp_path, call, argname):
    with pytest.raises(ValueError, match=argname):
        call(tmp_path)
