"""Stable Diffusion in miniature, trained from scratch: the three training stages and their settings.

The stages follow the latent diffusion recipe (Rombach et al. 2022) on the course's toy world of coloured
shapes (``course_lib.data``):

    1. VAE       x (3, 32, 32) -> z (4, 8, 8): negative ELBO with a small beta; then the scale factor s
    2. CLIP      image/caption pairs, symmetric contrastive loss; its text encoder is then frozen
    3. UNet      DDPM training (Ho et al. 2020, Alg. 1) on s * z with frozen VAE and text encoder: random t,
                 noise eps, || eps - eps_theta(z_t, t, tau(y)) ||^2, caption dropped (-> "") 10% of the time

Every stage is a function that takes a ``MiniSDConfig`` and an output folder, checkpoints while it trains,
resumes from its newest complete checkpoint if it was interrupted, and skips itself if its result is already
in the folder. A few colour-shape pairs (``held_out_pairs``) never appear in any stage's training data, so the
finished model's accuracy on them measures compositional generalisation.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib._checks import check_bool, check_choice, check_float, check_int
from course_lib._config import JSONConfig
from course_lib._io import atomic_save_safetensors, atomic_write_json, load_safetensors
from course_lib.data import COLOURS, SHAPES, all_pairs, caption_for, shapes_batch
from course_lib.guidance import apply_keep_mask, sample_keep_mask
from course_lib.pipeline import TEXT_FEATURES, MiniSDPipeline, encode_text
from course_lib.scenes import HELD_OUT_PAIRINGS, SceneDataset, scene_vocabulary, scenes_batch
from course_lib.schedulers import STABLE_DIFFUSION_BETAS, DDIMScheduler, DDPMScheduler
from course_lib.snr import min_snr_weights
from course_lib.text import CaptionTokenizer, CLIPConfig, TextEncoder, TinyCLIP, contrastive_loss, zero_shot_classify
from course_lib.train import EMA, cosine_schedule_with_warmup, train_loop
from course_lib.unet import UNet, UNetConfig
from course_lib.vae import VAE, VAEConfig, estimate_scale_factor, vae_loss

__all__ = ["MiniSDConfig", "train_vae", "train_clip", "train_unet", "build_pipeline", "prompt_set",
           "training_captions"]

HELD_OUT_PAIRS = (("green", "triangle"), ("yellow", "circle"))
TUNED_TEXT_ENCODER = "text_encoder.safetensors"  # in unet/, when config.train_text_encoder
WORLDS = ("shapes", "scenes")  # course_lib.data's one object at 32x32, course_lib.scenes' one or two at 64x64


@dataclass
class MiniSDConfig(JSONConfig):
    """Every knob of the miniature Stable Diffusion. Defaults: the real run (minutes on 2 CPU cores)."""
    seed: int = 0
    world: str = "shapes"
    image_size: int = 32
    held_out_pairs: tuple = HELD_OUT_PAIRS
    held_out_pairings: tuple = HELD_OUT_PAIRINGS  # scenes only: seen objects never drawn together
    num_train_images: int = 20000
    num_val_images: int = 512
    # 1. VAE
    vae: VAEConfig = field(default_factory=VAEConfig.shapes)
    vae_steps: int = 750
    vae_batch_size: int = 64
    vae_lr: float = 2e-3
    vae_beta: float = 1e-3
    # 2. CLIP
    clip: CLIPConfig = field(default_factory=lambda: CLIPConfig.small(width=64, layers=2, embed_dim=64,
                                                                      image_widths=(16, 32, 64)))
    clip_steps: int = 400
    clip_batch_size: int = 128
    clip_lr: float = 2e-3
    # 3. UNet
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(block_channels=(48, 96), attention_levels=(1,),
                                                                num_heads=4, norm_groups=16))
    unet_steps: int = 2500
    unet_batch_size: int = 64
    unet_lr: float = 1e-3
    cond_dropout: float = 0.1
    text_features: str = "last_hidden_state+token_embeddings"  # what the UNet attends to (pipeline.encode_text)
    train_text_encoder: bool = False  # also train the text encoder with the UNet's loss (SD keeps CLIP frozen)
    ema_decay: float = 0.999
    snr_gamma: float | None = 5.0   # min-SNR-gamma loss weighting (Hang et al. 2023); None: plain MSE
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    # sampling
    num_inference_steps: int = 25
    guidance_scale: float = 3.0
    layout_guidance_scale: float = 0.0  # > 0: steer relation captions' layouts (course_lib.layout_guidance)
    layout_guidance_steps: int = 10     # ... during this many of the first denoising steps
    checkpoint_every: int = 250

    def __post_init__(self):
        check_int("seed", self.seed, minimum=0)
        check_int("image_size", self.image_size, minimum=8)
        for name in ("num_train_images", "num_val_images", "vae_steps", "vae_batch_size", "clip_steps",
                     "clip_batch_size", "unet_steps", "unet_batch_size", "num_train_timesteps",
                     "num_inference_steps", "checkpoint_every"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("vae_lr", "clip_lr", "unet_lr"):
            check_float(name, getattr(self, name), minimum=0.0, min_inclusive=False)
        check_float("vae_beta", self.vae_beta, minimum=0.0)
        check_float("cond_dropout", self.cond_dropout, minimum=0.0, maximum=1.0)
        check_choice("text_features", self.text_features, TEXT_FEATURES)
        check_bool("train_text_encoder", self.train_text_encoder)
        check_float("ema_decay", self.ema_decay, minimum=0.0, maximum=1.0)
        check_float("guidance_scale", self.guidance_scale, minimum=0.0)
        check_float("layout_guidance_scale", self.layout_guidance_scale, minimum=0.0)
        check_int("layout_guidance_steps", self.layout_guidance_steps, minimum=0)
        check_choice("world", self.world, WORLDS)
        if self.snr_gamma is not None:
            check_float("snr_gamma", self.snr_gamma, minimum=0.0, min_inclusive=False)
        self.held_out_pairs = tuple(tuple(p) for p in self.held_out_pairs)
        known = set(all_pairs())
        for pair in self.held_out_pairs:
            if pair not in known:
                raise ValueError(f"held_out_pairs must hold (colour, shape) pairs from {sorted(known)}, got {pair!r}")
        self.held_out_pairings = tuple(tuple(tuple(p) for p in pairing) for pairing in self.held_out_pairings)
        if self.world == "scenes":  # the scenes dataset checks its held-out sets itself
            SceneDataset(1, self.image_size, self.seed, "train", self.held_out_pairs, self.held_out_pairings)
        if self.image_size % self.vae.downsample_factor:
            raise ValueError(f"image_size must be divisible by the VAE's downsample factor "
                             f"{self.vae.downsample_factor}, got {self.image_size}")

    @classmethod
    def fast(cls, **overrides) -> "MiniSDConfig":
        """Checks the plumbing in well under two minutes (CI); the pictures are not meant to be good."""
        preset = dict(num_train_images=512, num_val_images=64, vae=VAEConfig.shapes(), vae_steps=30,
                      clip=CLIPConfig.tiny(image_size=32), clip_steps=30, clip_batch_size=32,
                      unet=UNetConfig(block_channels=(32, 64), attention_levels=(1,), num_heads=2, context_dim=32,
                                      norm_groups=8),
                      unet_steps=30, unet_batch_size=16, num_inference_steps=5, checkpoint_every=20)
        if overrides.get("world") == "scenes":
            preset.update(image_size=64, num_train_images=256, vae=VAEConfig.scenes(), vae_batch_size=8,
                          clip=CLIPConfig.tiny(image_widths=(8, 16, 16, 32)), train_text_encoder=True,
                          layout_guidance_scale=1.0, layout_guidance_steps=2)
        return cls(**{**preset, **overrides})

    @classmethod
    def scenes(cls, **overrides) -> "MiniSDConfig":
        """The scenes world at Stable Diffusion's compression: 3x64x64 images -> 4x8x8 latents (f = 8).

        The text encoder is trained with the UNet (CLIP's contrastive loss leaves "a red square and a blue circle"
        and its colour swap nearly the same; docs/results.md). The UNet takes 3500 steps of 32 scenes: a step of 32
        costs 0.7 of a step of 64 on 2 CPU cores (AdamW, the EMA and each layer's fixed overhead cost the same at any
        batch), so more, smaller steps fit the 10 minutes, and they bind and count better than 2200 steps of 64
        (docs/results.md). Relation captions are sampled with layout guidance (the UNet alone draws "left of"
        and "right of" alike; course_lib.layout_guidance), in steps of 0.5: steps of 1.0 get the relations as
        often but add a third object to more pictures (docs/results.md)."""
        preset = dict(world="scenes", image_size=64, num_train_images=10000, vae=VAEConfig.scenes(), vae_steps=600,
                      vae_batch_size=16, clip=CLIPConfig.small(width=64, layers=2, embed_dim=64,
                                                               image_widths=(8, 16, 32, 64)),
                      train_text_encoder=True, unet_steps=3500, unet_batch_size=32, layout_guidance_scale=0.5)
        return cls(**{**preset, **overrides})

# ----------------------------------------------------------------------------------------------------------
# Data and prompts
# ----------------------------------------------------------------------------------------------------------

def training_captions(world: str = "shapes") -> list[str]:
    """Captions holding every word of the world's grammar: the tokenizer's vocabulary comes from these."""
    from course_lib.data import POSITIONS, SIZES
    check_choice("world", world, WORLDS)
    if world == "scenes":
        return scene_vocabulary()
    return [caption_for(c, s, size, pos) for c, s in all_pairs() for size in (None, *SIZES)
            for pos in (None, *POSITIONS)]


def prompt_set(pairs=None) -> list[tuple[str, int, int]]:
    """(prompt, shape index, colour index) for "a <colour> <shape>" over ``pairs`` (default: all 12)."""
    pairs = all_pairs() if pairs is None else pairs
    return [(caption_for(c, s), SHAPES.index(s), COLOURS.index(c)) for c, s in pairs]


def _train_data(config: MiniSDConfig) -> dict:
    if config.world == "scenes":
        return scenes_batch(config.num_train_images, seed=config.seed, image_size=config.image_size, split="train",
                            held_out_pairs=config.held_out_pairs, held_out_pairings=config.held_out_pairings)
    return shapes_batch(config.num_train_images, seed=config.seed, image_size=config.image_size,
                        exclude_pairs=config.held_out_pairs, caption_style="mixed")


def _val_data(config: MiniSDConfig) -> dict:
    """Held-out images of the *seen* pairs (another seed)."""
    if config.world == "scenes":
        return scenes_batch(config.num_val_images, seed=config.seed + 10_000, image_size=config.image_size,
                            held_out_pairs=config.held_out_pairs, held_out_pairings=config.held_out_pairings)
    return shapes_batch(config.num_val_images, seed=config.seed + 10_000, image_size=config.image_size,
                        exclude_pairs=config.held_out_pairs, caption_style="short")


def _stage_done(folder: Path) -> dict | None:
    report = folder / "report.json"
    return json.loads(report.read_text()) if report.is_file() else None


def _batches(n: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """A random minibatch of indices into the rendered training set."""
    return torch.randint(0, n, (batch_size,), generator=generator)


# ----------------------------------------------------------------------------------------------------------
# 1. VAE
# ----------------------------------------------------------------------------------------------------------

def train_vae(config: MiniSDConfig, out_dir: str | Path, data: dict | None = None) -> tuple[VAE, dict]:
    """Stage 1: train the VAE, measure held-out reconstruction error, pick the latent scale factor s."""
    folder = Path(out_dir) / "vae"
    if (done := _stage_done(folder)) is not None:
        return VAE.from_pretrained(folder), done
    start = time.perf_counter()
    data = _train_data(config) if data is None else data
    images = data["image"]
    torch.manual_seed(config.seed)
    vae = VAE(config.vae)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    scheduler = cosine_schedule_with_warmup(optimizer, min(100, config.vae_steps // 10), config.vae_steps)
    generator = torch.Generator().manual_seed(config.seed)

    def step_fn(step, g):
        x = images[_batches(len(images), config.vae_batch_size, g)]
        out = vae(x, generator=g)
        return vae_loss(out.sample, x, out.posterior, beta=config.vae_beta).loss

    history = train_loop(step_fn, config.vae_steps, modules={"vae": vae}, optimizer=optimizer,
                         lr_scheduler=scheduler, generator=generator, checkpoint_dir=Path(out_dir) / "checkpoints/vae",
                         checkpoint_every=config.checkpoint_every, resume="latest", max_grad_norm=1.0, desc="1/3 VAE")
    vae.eval()
    with torch.no_grad():
        val = _val_data(config)["image"]
        recon = vae(val, sample_posterior=False).sample.clamp(-1, 1)
        mse = F.mse_loss(recon, val).item()
        scale = estimate_scale_factor(vae, images[:2048], generator=torch.Generator().manual_seed(config.seed))
    report = {"val_mse": mse, "val_psnr_db": 10 * math.log10(4.0 / mse), "scale_factor": scale,
              "latent_shape": list(vae.encode(val[:1]).mean.shape[1:]), "parameters": vae.num_parameters(),
              "steps": config.vae_steps, "seconds": time.perf_counter() - start, "losses": history.losses}
    vae.save_pretrained(folder)
    atomic_write_json(folder / "report.json", report)
    return vae, report


# ----------------------------------------------------------------------------------------------------------
# 2. CLIP
# ----------------------------------------------------------------------------------------------------------

def make_tokenizer(config: MiniSDConfig) -> CaptionTokenizer:
    return CaptionTokenizer.from_texts(training_captions(config.world), max_length=config.clip.max_length)


def train_clip(config: MiniSDConfig, out_dir: str | Path, data: dict | None = None
               ) -> tuple[TinyCLIP, CaptionTokenizer, dict]:
    """Stage 2: contrastive pre-training of the tiny CLIP on image/caption pairs; zero-shot accuracy."""
    folder = Path(out_dir) / "clip"
    if (done := _stage_done(folder)) is not None:
        return TinyCLIP.from_pretrained(folder), CaptionTokenizer.load(folder / "tokenizer.json"), done
    start = time.perf_counter()
    data = _train_data(config) if data is None else data
    tokenizer = make_tokenizer(config)
    clip_config = dataclasses.replace(config.clip, vocab_size=tokenizer.vocab_size, image_size=config.image_size)
    torch.manual_seed(config.seed + 1)
    clip = TinyCLIP(clip_config)
    tokens = tokenizer(data["caption"], max_length=clip_config.max_length)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=config.clip_lr, weight_decay=0.01)
    scheduler = cosine_schedule_with_warmup(optimizer, min(50, config.clip_steps // 10), config.clip_steps)
    generator = torch.Generator().manual_seed(config.seed + 1)

    def step_fn(step, g):
        idx = _batches(len(data["caption"]), config.clip_batch_size, g)
        text = clip.encode_text(tokens["input_ids"][idx], tokens["attention_mask"][idx])
        return contrastive_loss(clip.encode_image(data["image"][idx]), text, clip.logit_scale)

    history = train_loop(step_fn, config.clip_steps, modules={"clip": clip}, optimizer=optimizer,
                         lr_scheduler=scheduler, generator=generator,
                         checkpoint_dir=Path(out_dir) / "checkpoints/clip", checkpoint_every=config.checkpoint_every,
                         resume="latest", max_grad_norm=1.0, desc="2/3 CLIP")
    clip.eval()
    zero_shot, num_classes = _zero_shot(config, clip, tokenizer)
    report = {"zero_shot_accuracy": zero_shot, "num_classes": num_classes, "parameters":
              sum(p.numel() for p in clip.parameters()), "steps": config.clip_steps,
              "seconds": time.perf_counter() - start, "losses": history.losses}
    clip.save_pretrained(folder)
    tokenizer.save(folder / "tokenizer.json")
    atomic_write_json(folder / "report.json", report)
    return clip, tokenizer, report


@torch.no_grad()
def _zero_shot(config: MiniSDConfig, clip: TinyCLIP, tokenizer: CaptionTokenizer) -> tuple[float, int]:
    """Shapes: classify held-out images among the 12 "a <colour> <shape>" prompts. Scenes: pick each image's
    caption among the distinct captions of the validation set (retrieval)."""
    val = _val_data(config)
    if config.world == "scenes":
        prompts = sorted(set(val["caption"]))
        predicted, _ = zero_shot_classify(clip, tokenizer, val["image"], prompts)
        right = [prompts[p] == caption for p, caption in zip(predicted.tolist(), val["caption"])]
        return sum(right) / len(right), len(prompts)
    prompts = prompt_set()
    predicted, _ = zero_shot_classify(clip, tokenizer, val["image"], [p for p, _, _ in prompts])
    target = torch.tensor([[s, c] for _, s, c in prompts])[predicted]
    return ((target[:, 0] == val["shape"]) & (target[:, 1] == val["colour"])).float().mean().item(), len(prompts)


# ----------------------------------------------------------------------------------------------------------
# 3. UNet
# ----------------------------------------------------------------------------------------------------------

def make_scheduler(config: MiniSDConfig) -> DDPMScheduler:
    """The training noise schedule: Stable Diffusion's betas (``config.beta_schedule`` may swap their spacing)."""
    betas = {**STABLE_DIFFUSION_BETAS, "beta_schedule": config.beta_schedule}
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, **betas, clip_sample=False)


@torch.no_grad()
def _encode_dataset(vae: VAE, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every training image, computed once (the VAE is frozen)."""
    means, stds = [], []
    for batch in images.split(batch_size):
        posterior = vae.encode(batch)
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def _caption_tokens(tokenizer: CaptionTokenizer, captions: list[str], max_length: int):
    """The tokens of every distinct caption and "" (for condition dropout), and where each caption sits.
    Returns (tokens: dict(input_ids (U, L), attention_mask (U, L)), index of each caption (N,), index of "")."""
    unique = sorted(set(captions) | {""})
    tokens = tokenizer(unique, max_length=max_length)
    lookup = {caption: i for i, caption in enumerate(unique)}
    return tokens, torch.tensor([lookup[c] for c in captions]), lookup[""]


@torch.no_grad()
def _encode_captions(text_encoder: TextEncoder, tokenizer: CaptionTokenizer, captions: list[str],
                     text_features: str = "last_hidden_state"):
    """tau(y) for every distinct caption, computed once (the text encoder is frozen).
    Returns (features (U, L', D), masks (U, L') bool, index of each caption (N,), index of "")."""
    tokens, index, empty = _caption_tokens(tokenizer, captions, text_encoder.config.max_length)
    features, masks = encode_text(text_encoder, tokens["input_ids"], tokens["attention_mask"], text_features)
    return features, masks, index, empty


def train_unet(config: MiniSDConfig, out_dir: str | Path, vae: VAE, text_encoder: TextEncoder,
               tokenizer: CaptionTokenizer, scale_factor: float, data: dict | None = None) -> tuple[UNet, dict]:
    """Stage 3: Ho et al. 2020's Algorithm 1 on latents, with condition dropout, min-SNR weighting and EMA.
    Returns the EMA weights (what sampling uses).

    With ``config.train_text_encoder`` the UNet's loss also trains ``text_encoder``, in place (EMA-averaged like
    the UNet; saved as ``unet/text_encoder.safetensors`` and loaded back into it when the stage is done): CLIP's
    contrastive objective barely separates "left of" from "right of", the denoising loss has to.
    """
    folder = Path(out_dir) / "unet"
    if (done := _stage_done(folder)) is not None:
        for key, want in (("text_features", config.text_features), ("train_text_encoder", config.train_text_encoder)):
            if done.get(key, False) != want:
                raise ValueError(f"config.{key} is {want!r} but the UNet in {folder} was trained with "
                                 f"{done.get(key, False)!r}; start a fresh output folder (demo: --fresh)")
        if config.train_text_encoder:
            text_encoder.load_state_dict(load_safetensors(folder / TUNED_TEXT_ENCODER))
            text_encoder.eval().requires_grad_(False)
        return UNet.from_pretrained(folder), done
    start = time.perf_counter()
    data = _train_data(config) if data is None else data
    vae.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    means, stds = _encode_dataset(vae, data["image"])
    encode_seconds = time.perf_counter() - start  # the data and its latents, before the first step
    if config.train_text_encoder:  # tokens of every distinct caption; features computed in each step
        tokens, caption_index, empty = _caption_tokens(tokenizer, data["caption"], text_encoder.config.max_length)
        text_encoder.train().requires_grad_(True)
    else:
        features, masks, caption_index, empty = _encode_captions(text_encoder, tokenizer, data["caption"],
                                                                 config.text_features)
    unet_config = dataclasses.replace(config.unet, in_channels=vae.config.latent_channels,
                                      out_channels=vae.config.latent_channels, context_dim=text_encoder.config.width)
    torch.manual_seed(config.seed + 2)
    unet = UNet(unet_config)
    trained = {"unet": unet, **({"text_encoder": text_encoder} if config.train_text_encoder else {})}
    together = nn.ModuleDict(trained)  # what the optimizer and the EMA see
    ema = EMA(together, decay=config.ema_decay)
    noise_scheduler = make_scheduler(config)
    optimizer = torch.optim.AdamW(together.parameters(), lr=config.unet_lr, weight_decay=0.01)
    lr_scheduler = cosine_schedule_with_warmup(optimizer, min(200, config.unet_steps // 10), config.unet_steps)
    generator = torch.Generator().manual_seed(config.seed + 2)

    def step_fn(step, g):
        idx = _batches(len(means), config.unet_batch_size, g)
        # x_0: a fresh posterior sample of each image's latent, scaled to unit variance
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=g)) * scale_factor
        # the caption, replaced by "" with probability cond_dropout (classifier-free guidance training)
        keep = sample_keep_mask(len(idx), p=config.cond_dropout, generator=g)
        which = apply_keep_mask(caption_index[idx], empty, keep)
        if config.train_text_encoder:
            context, context_mask = encode_text(text_encoder, tokens["input_ids"][which],
                                                tokens["attention_mask"][which], config.text_features)
        else:
            context, context_mask = features[which], masks[which]                  # (B, L', D), (B, L')
        # Ho et al. 2020, Alg. 1: t ~ U{0..T-1}, eps ~ N(0, I), z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps
        t = torch.randint(0, config.num_train_timesteps, (len(idx),), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        z_t = noise_scheduler.add_noise(z0, noise, t)
        pred = unet(z_t, t, context, context_mask)
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        if config.snr_gamma is not None:
            per_sample = per_sample * min_snr_weights(noise_scheduler, t, config.snr_gamma)
        return per_sample.mean()

    history = train_loop(step_fn, config.unet_steps, modules=trained, optimizer=optimizer,
                         lr_scheduler=lr_scheduler, generator=generator,
                         checkpoint_dir=Path(out_dir) / "checkpoints/unet", checkpoint_every=config.checkpoint_every,
                         resume="latest", max_grad_norm=1.0, desc="3/3 UNet", ema=ema)
    ema.copy_to(together)
    together.eval().requires_grad_(False)
    seconds = time.perf_counter() - start
    steps_this_run = config.unet_steps - (history.resumed_from or 0)  # a resumed stage timed only the rest
    report = {"parameters": unet.num_parameters(), "steps": config.unet_steps, "batch_size": config.unet_batch_size,
              "text_features": config.text_features, "train_text_encoder": config.train_text_encoder,
              "seconds": seconds, "losses": history.losses, "encode_seconds": encode_seconds,
              "steps_this_run": steps_this_run,
              "steps_per_second": steps_this_run / max(seconds - encode_seconds, 1e-9)}
    unet.save_pretrained(folder)
    if config.train_text_encoder:
        atomic_save_safetensors(folder / TUNED_TEXT_ENCODER, text_encoder.state_dict())
    atomic_write_json(folder / "report.json", report)
    return unet, report


def build_pipeline(config: MiniSDConfig, vae: VAE, text_encoder: TextEncoder, tokenizer: CaptionTokenizer,
                   unet: UNet, scale_factor: float) -> MiniSDPipeline:
    """Assemble the trained pieces with a DDIM sampler sharing the training noise schedule."""
    sampler = DDIMScheduler.from_config({**make_scheduler(config).config.to_dict(), "set_alpha_to_one": False,
                                         "steps_offset": 1})
    return MiniSDPipeline(vae, text_encoder, tokenizer, unet, sampler, scale_factor, image_size=config.image_size,
                          text_features=config.text_features)
