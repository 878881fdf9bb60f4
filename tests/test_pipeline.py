"""MiniSDPipeline: the sampling loop is the textbook one, and each task keeps its promises.

The components are tiny and untrained: these tests check the plumbing against loops written out here
(scheduler + UNet + guidance formula), not picture quality (that is the demo's benchmark).
"""
import pytest
import torch

from course_lib.pipeline import MiniSDPipeline, encode_text
from course_lib.schedulers import DDIMScheduler, DDPMScheduler
from course_lib.text import CaptionTokenizer, CLIPConfig, TextEncoder
from course_lib.unet import UNet, UNetConfig
from course_lib.vae import VAE, VAEConfig

PROMPTS = ["a red circle", "a small blue square at the top left"]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    tokenizer = CaptionTokenizer.from_texts(PROMPTS + ["a green triangle"], max_length=12)
    text_encoder = TextEncoder(CLIPConfig.tiny(vocab_size=tokenizer.vocab_size, max_length=12)).eval()
    vae = VAE(VAEConfig.tiny()).eval()  # 3x32x32 -> 4x16x16
    unet = UNet(UNetConfig(block_channels=(16, 32), attention_levels=(1,), num_heads=2, norm_groups=8,
                           context_dim=text_encoder.config.width)).eval()
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    return MiniSDPipeline(vae, text_encoder, tokenizer, unet, scheduler, scale_factor=0.5, image_size=32)


def _noise(pipe, seed=0, batch=2):
    return torch.randn(pipe.latent_shape(batch), generator=torch.Generator().manual_seed(seed))


def test_txt2img_equals_the_loop_written_out(pipe):
    w, steps = 3.0, 4
    latents = _noise(pipe)
    out = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=w, latents=latents, progress=False)
    # the same thing by hand: tokens -> tau(y), CFG batch (unconditional first), DDIM eta=0, decode z / s
    tok = pipe.tokenizer(PROMPTS + ["", ""], max_length=12)
    ctx = pipe.text_encoder(tok["input_ids"], tok["attention_mask"]).last_hidden_state
    cond, uncond = ctx[:2], ctx[2:]
    mask = tok["attention_mask"].bool()
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    scheduler.set_timesteps(steps)
    x = latents.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            e = pipe.unet(torch.cat([x, x]), t, torch.cat([uncond, cond]), torch.cat([mask[2:], mask[:2]]))
            e_u, e_c = e.chunk(2)
            x = scheduler.step(e_u + w * (e_c - e_u), t, x).prev_sample
        expected = pipe.vae.decode(x / 0.5).clamp(-1, 1)
    torch.testing.assert_close(out.latents, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.images, expected, atol=1e-5, rtol=0)
    assert out.images.shape == (2, 3, 32, 32)


def test_same_seed_same_images_and_other_seed_differs(pipe):
    a = pipe(PROMPTS, num_inference_steps=3, generator=torch.Generator().manual_seed(1), progress=False).images
    b = pipe(PROMPTS, num_inference_steps=3, generator=torch.Generator().manual_seed(1), progress=False).images
    c = pipe(PROMPTS, num_inference_steps=3, generator=torch.Generator().manual_seed(2), progress=False).images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_trajectory_has_one_prediction_per_step(pipe):
    out = pipe(PROMPTS, num_inference_steps=3, latents=_noise(pipe), return_trajectory=True, progress=False)
    assert len(out.trajectory) == len(out.timesteps) == 3
    assert out.timesteps == sorted(out.timesteps, reverse=True)


def test_guidance_scale_one_is_the_conditional_model(pipe):
    latents = _noise(pipe, 3)
    guided = pipe(PROMPTS, num_inference_steps=3, guidance_scale=1.0, latents=latents, progress=False).latents
    cond, mask = pipe.encode_prompt(PROMPTS)
    x = latents.clone()
    pipe.scheduler.set_timesteps(3)
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            x = pipe.scheduler.step(pipe.unet(x, t, cond, mask), t, x).prev_sample
    torch.testing.assert_close(guided, x, atol=1e-5, rtol=0)


def test_img2img_strength_zero_returns_the_vae_round_trip(pipe):
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    out = pipe.img2img(images, PROMPTS, strength=0.0, num_inference_steps=4, progress=False)
    with torch.no_grad():
        expected = pipe.vae.decode(pipe.vae.encode(images).mode()).clamp(-1, 1)
    torch.testing.assert_close(out.images, expected, atol=1e-5, rtol=0)


def test_img2img_runs_the_strength_share_of_the_steps(pipe):
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    calls = []
    original = pipe.unet.forward
    pipe.unet.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        pipe.img2img(images, PROMPTS, strength=0.5, num_inference_steps=10, progress=False)
    finally:
        del pipe.unet.forward
    assert len(calls) == 5


def test_inpaint_keeps_the_unmasked_latents(pipe):
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :, 16:] = 1  # generate the right half
    out = pipe.inpaint(images, mask, PROMPTS, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                       progress=False)
    z0 = pipe.encode_images(images)
    keep = slice(0, 8)  # latent columns 0..7 of 16 are fully outside the mask
    torch.testing.assert_close(out.latents[..., keep], z0[..., keep], atol=1e-6, rtol=0)
    assert not torch.allclose(out.latents[..., 8:], z0[..., 8:], atol=1e-3)


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    loaded = MiniSDPipeline.from_pretrained(tmp_path / "p")
    latents = _noise(pipe, 5)
    a = pipe(PROMPTS, num_inference_steps=3, latents=latents, progress=False).images
    b = loaded(PROMPTS, num_inference_steps=3, latents=latents, progress=False).images
    assert torch.equal(a, b)
    assert loaded.scale_factor == pipe.scale_factor and loaded.image_size == pipe.image_size


def test_ddpm_scheduler_works_too(pipe):
    ddpm = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    other = MiniSDPipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, ddpm, 0.5)
    out = other(PROMPTS, num_inference_steps=3, generator=torch.Generator().manual_seed(0), progress=False)
    assert out.images.shape == (2, 3, 32, 32) and torch.isfinite(out.images).all()


def test_token_embedding_features_append_the_context_free_words(pipe):
    tok = pipe.tokenizer(PROMPTS, max_length=12)
    ids, mask = tok["input_ids"], tok["attention_mask"]
    with torch.no_grad():
        features, features_mask = encode_text(pipe.text_encoder, ids, mask, "last_hidden_state+token_embeddings")
        hidden = pipe.text_encoder(ids, mask).last_hidden_state
        te = pipe.text_encoder
        words = te.token_embedding.weight[ids] + te.position_embedding.weight[:12]  # (B, L, width)
        mean, var = words.mean(-1, keepdim=True), words.var(-1, unbiased=False, keepdim=True)
        words = (words - mean) / torch.sqrt(var + 1e-5)
    assert features.shape == (2, 24, te.config.width) and features_mask.shape == (2, 24)
    torch.testing.assert_close(features[:, :12], hidden, atol=1e-6, rtol=0)
    torch.testing.assert_close(features[:, 12:], words, atol=1e-5, rtol=0)
    assert torch.equal(features_mask, torch.cat([mask, mask], dim=1).bool())
    # the appended half of "circle" does not depend on the words before it; the hidden state does
    other = pipe.tokenizer(["a green circle"], max_length=12)["input_ids"]
    assert ids[0, 3] == other[0, 3]  # "circle" at the same position
    with torch.no_grad():
        f_other, _ = encode_text(te, other, torch.ones_like(other).masked_fill(other == 0, 0),
                                 "last_hidden_state+token_embeddings")
    torch.testing.assert_close(f_other[0, 12 + 3], features[0, 12 + 3])
    assert not torch.allclose(f_other[0, 3], features[0, 3])


def test_pipeline_with_token_embedding_features_samples_and_round_trips(pipe, tmp_path):
    other = MiniSDPipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, pipe.scheduler, 0.5,
                           text_features="last_hidden_state+token_embeddings")
    cond, cond_mask = other.encode_prompt(PROMPTS)
    assert cond.shape[1] == cond_mask.shape[1] == 24
    latents = _noise(pipe, 6)
    a = other(PROMPTS, num_inference_steps=2, latents=latents, progress=False).images
    b = pipe(PROMPTS, num_inference_steps=2, latents=latents, progress=False).images
    assert not torch.equal(a, b)  # the UNet sees other tokens
    other.save_pretrained(tmp_path / "p")
    loaded = MiniSDPipeline.from_pretrained(tmp_path / "p")
    assert loaded.text_features == "last_hidden_state+token_embeddings"
    assert torch.equal(loaded(PROMPTS, num_inference_steps=2, latents=latents, progress=False).images, a)


IMAGES = torch.zeros(2, 3, 32, 32)
MASK = torch.zeros(1, 1, 32, 32)
BAD = [
    ("prompts", lambda p: p([], progress=False)),
    ("prompts", lambda p: p([1, 2], progress=False)),
    ("num_inference_steps", lambda p: p(PROMPTS, num_inference_steps=0, progress=False)),
    ("guidance_scale", lambda p: p(PROMPTS, guidance_scale=-1.0, num_inference_steps=2, progress=False)),
    ("latents", lambda p: p(PROMPTS, latents=torch.zeros(2, 4, 8, 8), progress=False)),
    ("image_size", lambda p: p(PROMPTS, image_size=30, progress=False)),
    ("strength", lambda p: p.img2img(IMAGES, PROMPTS, strength=1.5, progress=False)),
    ("strength", lambda p: p.img2img(IMAGES, PROMPTS, strength=-0.1, progress=False)),
    ("images", lambda p: p.img2img(torch.zeros(2, 1, 32, 32), PROMPTS, progress=False)),
    ("images", lambda p: p.img2img(torch.zeros(2, 3, 30, 30), PROMPTS, progress=False)),
    ("image_size", lambda p: MiniSDPipeline(p.vae, p.text_encoder, p.tokenizer, p.unet, p.scheduler, 1.0, 30)),
    ("prompts", lambda p: p.img2img(IMAGES, ["a red circle"], progress=False)),
    ("mask", lambda p: p.inpaint(IMAGES, torch.zeros(1, 1, 16, 16), PROMPTS, progress=False)),
    ("mask", lambda p: p.inpaint(IMAGES, MASK + 0.5, PROMPTS, progress=False)),
    ("scale_factor", lambda p: MiniSDPipeline(p.vae, p.text_encoder, p.tokenizer, p.unet, p.scheduler, 0.0)),
    ("unet", lambda p: MiniSDPipeline(p.vae, p.text_encoder, p.tokenizer, None, p.scheduler, 1.0)),
    ("unet", lambda p: MiniSDPipeline(p.vae, p.text_encoder, p.tokenizer, UNet(UNetConfig.tiny()), p.scheduler,
                                      1.0)),
    ("folder", lambda p: MiniSDPipeline.from_pretrained("/nonexistent/pipeline")),
    ("text_features", lambda p: MiniSDPipeline(p.vae, p.text_encoder, p.tokenizer, p.unet, p.scheduler, 1.0,
                                               text_features="pooled")),
    ("text_features", lambda p: encode_text(p.text_encoder, torch.tensor([[1, 2]]), torch.tensor([[1, 1]]), "all")),
]


@pytest.mark.parametrize("argument, call", BAD, ids=[f"{i}-{a}" for i, (a, _) in enumerate(BAD)])
def test_bad_input_names_the_argument(pipe, argument, call):
    with pytest.raises(ValueError, match=argument):
        call(pipe)
