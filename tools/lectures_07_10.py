"""Build lectures 07-10 (Stable Diffusion v1.5, fine-tuning and LoRA, beyond SD, the LoRA workshop) with nbformat.

    .venv/bin/python tools/lectures_07_10.py            # write the four notebooks without outputs
    .venv/bin/python tools/lectures_07_10.py 08 10      # only some of them
    .venv/bin/python tools/lectures_07_10.py --tidy lectures/08_fine_tuning_and_lora.ipynb   # after executing it

The notebooks are the source students read; this script only keeps them reproducible. Execute them with
papermill (``tests/test_lectures.py`` does it with FAST=True) to fill in outputs.
"""
from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import nbformat

ROOT = Path(__file__).resolve().parents[1]
LECTURES = ROOT / "lectures"
REPO = "https://github.com/sd-course/latent-diffusion-course"


def md(text: str):
    return nbformat.v4.new_markdown_cell(dedent(text).strip("\n"))


def code(*parts: str, tags: list[str] | None = None):
    """A code cell from one or more source pieces, each dedented on its own, joined by blank lines."""
    cell = nbformat.v4.new_code_cell("\n\n".join(dedent(part).strip("\n") for part in parts))
    if tags:
        cell.metadata["tags"] = tags
    return cell


def badge(stem: str) -> str:
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/main/lectures/"
            f"{stem}.ipynb)")


SETUP = code(f'''
    # Colab: install the course library; Colab's own torch stays (the course asks for torch>=2.1).
    import sys, subprocess
    if "google.colab" in sys.modules:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        "course_lib @ git+{REPO}"], check=True)
''')

# The first lines of every notebook's imports cell: caches stay in the notebook's folder when run locally.
LOCAL_ENV = '''
    import os, sys, time, json, shutil, warnings
    from pathlib import Path
    ON_COLAB = "google.colab" in sys.modules
    if not ON_COLAB:
        # Locally, every file this notebook writes stays under ./outputs (the datasets library would otherwise
        # cache under ~/.cache), and transformers' notice that torchvision is not installed is silenced.
        os.environ.setdefault("HF_DATASETS_CACHE", str(Path("outputs/hf_datasets_cache").resolve()))
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
'''

# How notebooks 07 and 10 pick the model: the real SD v1.5 on a GPU with network, the tiny twin otherwise.
LOAD_MODEL = '''
    def tiny_model_folder(folder=Path("outputs/tiny-sd")) -> Path:
        """The tiny random-weight twin of SD v1.5 (course_lib.sd.build_tiny_sd), built once, reused afterwards."""
        if not (folder / "model_index.json").is_file():
            build_tiny_sd(folder, seed=0)   # written atomically: the folder is complete or absent
        return folder


    def to_device(components):
        """Move the three networks to DEVICE (model.to(DEVICE) on each: SDComponents.to also passes dtype=None,
        which makes diffusers print a misleading warning about float32 modules)."""
        for model in (components.unet, components.vae, components.text_encoder):
            model.to(DEVICE)
        return components


    def load_model(model: str, revision: str | None, dtype: torch.dtype | None = None):
        """(components, where, is_tiny): ``model`` (hub id or folder) if it can be loaded, else the tiny twin.

        The pinned ``revision`` is tried first and then "main" (in case the hub no longer serves that commit).
        """
        if model != "tiny":
            for rev in dict.fromkeys([revision, "main"]):
                try:
                    return to_device(load_sd_components(model, rev, torch_dtype=dtype)), model, False
                except ModelNotAvailableError as err:
                    reason = str(err).split(". Without network")[0][-300:]
            print(f"Could not load {model!r} here, so this run uses the tiny offline model instead.\\n"
                  f"  reason: ...{reason}")
        folder = tiny_model_folder()
        return to_device(load_sd_components(folder)), str(folder), True
'''

QUIZ_INTRO = "## Check your understanding\n\nTry to answer before you open the answers."


def quiz(items: list[tuple[str, str]]):
    lines = [QUIZ_INTRO, ""]
    for i, (question, answer) in enumerate(items, 1):
        lines.append(f"{i}. {question}")
        lines.append(f"   <details><summary>Answer</summary>\n\n   {answer}\n\n   </details>\n")
    return nbformat.v4.new_markdown_cell("\n".join(lines))


# ======================================================================================================
# Lecture 07: Stable Diffusion v1.5 in practice
# ======================================================================================================

def lecture_07():
    stem = "07_stable_diffusion_v15"
    cells = [md(f'''
        # Lecture 7 - Stable Diffusion v1.5 in practice

        {badge(stem)}

        Six lectures built a latent diffusion model from its parts. This one opens the real thing: Stable
        Diffusion v1.5, the model behind most of the fine-tunes and LoRAs you will meet.

        **What you will learn**
        - the three networks of SD v1.5 and their sizes: the VAE (f = 8, 4 latent channels, scaling factor
          0.18215), the UNet (320/640/1280/1280 channels, ~860M parameters) and the CLIP ViT-L/14 text encoder
          (77 tokens x 768, ~123M parameters), read from their configs without downloading a byte;
        - the text-to-image pipeline written by hand from diffusers' parts (tokenize, encode, a classifier-free
          guidance batch, the scheduler loop, VAE decode), checked equal to `StableDiffusionPipeline`;
        - how to swap the sampler (DDIM, PNDM, Euler, DPM-Solver++) with `from_config`, and why that works;
        - how to make SD fit a small GPU: fp16, attention slicing, VAE slicing/tiling, CPU offload.

        **Prerequisites:** lectures 3-6 (DDPM/DDIM, the VAE, CLIP and cross-attention, classifier-free
        guidance).

        **Which model runs.** On a Colab GPU this notebook downloads the real SD v1.5 (about 4 GB, 1-3 min) and
        runs it in fp16. Without a GPU or without network (and always with `FAST = True`) it falls back to a
        *tiny twin*: the same diffusers classes with random weights and small widths
        (`course_lib.sd.build_tiny_sd`). Every line of code runs unchanged on both; only the pictures differ:
        the twin's are noise textures, because its weights were never trained.

        **Time:** laptop CPU (tiny twin) about 1-2 minutes; Colab T4 (real model) about 5 minutes plus the
        download.
    '''), SETUP, code('''
        FAST = False          # CI sets FAST = True: the tiny model, fewer steps
        MODEL = "auto"        # "auto": the real SD v1.5 on a GPU, else the tiny twin; or "tiny", a hub id, a folder
        REVISION = None       # None = the course's pinned commit of the hub repo (course_lib.sd.DEFAULT_REVISION)
        PROMPTS = ["a watercolor painting of a red fox in the snow", "a photo of a lighthouse at sunset"]
        SEED = 0
        STEPS = 30            # sampler steps for the main example
        GUIDANCE = 7.5        # classifier-free guidance scale w (SD's default)
        HEIGHT = WIDTH = 512  # SD v1.5 was trained at 512 x 512
        STEP_COUNTS = (10, 25)  # steps compared across samplers
    ''', tags=["parameters"]), code(LOCAL_ENV, '''
        import matplotlib.pyplot as plt
        import torch

        from course_lib.data import shapes_batch
        from course_lib.guidance import cfg_combine
        from course_lib.sd import (DEFAULT_MODEL_ID, DEFAULT_REVISION, ModelNotAvailableError, build_tiny_sd,
                                   count_parameters, generate, load_sd_components, sd15_config, sd15_empty_model)
        from course_lib.viz import plot_trajectory, save_image_grid, show_images

        REVISION = REVISION or DEFAULT_REVISION
        DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
        if DEVICE == "cpu":
            torch.set_num_threads(1)  # the tiny model's layers are too small to gain from threads; on a busy
                                      # machine two threads waiting for each other are many times slower
        OUT = Path("outputs/07_stable_diffusion_v15")
        OUT.mkdir(parents=True, exist_ok=True)
        plt.rcParams["figure.dpi"] = 80          # inline figures: readable, and small enough to keep in git
        torch.manual_seed(SEED)
        print(f"device: {DEVICE}" + (f" ({torch.cuda.get_device_name()})" if DEVICE == "cuda" else ""))
    '''), md('''
        ## 1. The three networks, as facts

        Stable Diffusion is latent diffusion (Rombach et al. 2022) with three separately trained networks:

        | symbol | network | diffusers class | what it does |
        |---|---|---|---|
        | $\\mathcal{E}, \\mathcal{D}$ | VAE | `AutoencoderKL` | image $x$ (3 x 512 x 512) $\\leftrightarrow$ latent $z$ (4 x 64 x 64) |
        | $\\epsilon_\\theta$ | UNet | `UNet2DConditionModel` | predicts the noise in $z_t$ given $t$ and the text |
        | $\\tau_\\theta$ | text encoder | `CLIPTextModel` | 77 tokens $\\to$ 77 vectors of width 768 |

        Their `config.json` files fully determine the architectures. `course_lib.sd.sd15_config` returns them
        (written out from the hub repo), and `sd15_empty_model` builds each network on PyTorch's **meta
        device**: every parameter has its real shape but no storage, so we can count 1.07 billion parameters
        in a second without downloading or allocating anything.
    '''), code('''
        configs = {name: sd15_config(name) for name in ("vae", "unet", "text_encoder")}
        facts = [
            ("vae", "block_out_channels"), ("vae", "latent_channels"), ("vae", "scaling_factor"),
            ("unet", "block_out_channels"), ("unet", "layers_per_block"), ("unet", "attention_head_dim"),
            ("unet", "cross_attention_dim"), ("unet", "sample_size"),
            ("text_encoder", "hidden_size"), ("text_encoder", "num_hidden_layers"),
            ("text_encoder", "num_attention_heads"), ("text_encoder", "max_position_embeddings"),
            ("text_encoder", "vocab_size"), ("text_encoder", "hidden_act"),
        ]
        for component, key in facts:
            print(f"{component:>13}.{key:<24} {configs[component][key]}")
        f = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
        print(f"\\nVAE downsampling factor f = 2^(blocks - 1) = {f}: a 512 x 512 image -> a "
              f"{512 // f} x {512 // f} latent, which is the UNet's sample_size = {configs['unet']['sample_size']}")
        print(f"numbers per image: 3 * 512^2 = {3 * 512 ** 2:,} pixels vs 4 * 64^2 = {4 * 64 ** 2:,} latents "
              f"({3 * 512 ** 2 // (4 * 64 ** 2)}x fewer)")
    '''), md('''
        Two names mislead: the UNet's `attention_head_dim = 8` is, for historical reasons, the **number of
        heads** (each head is 320/8 = 40, 640/8 = 80 or 1280/8 = 160 wide), and `sample_size = 64` is in latent
        cells, not pixels.
    '''), code('''
        t0 = time.perf_counter()
        real = {name: sd15_empty_model(name) for name in ("unet", "vae", "text_encoder")}   # meta device
        counts = {name: count_parameters(model) for name, model in real.items()}
        print(f"built and counted in {time.perf_counter() - t0:.1f} s, "
              f"device of the weights: {next(real['unet'].parameters()).device}")
        for name, n in counts.items():
            print(f"{name:>13}: {n:>13,} parameters  ({n / 1e6:7.2f} M)")
        print(f"{'total':>13}: {sum(counts.values()):>13,}")

        # where the UNet's parameters sit: one bar per top-level block
        unet_parts = {name: count_parameters(child) for name, child in real["unet"].named_children()}
        unet_parts = {k: v for k, v in unet_parts.items() if v > 0}
        blocks = {f"down_blocks.{i}": count_parameters(b) for i, b in enumerate(real["unet"].down_blocks)}
        blocks["mid_block"] = unet_parts["mid_block"]
        blocks.update({f"up_blocks.{i}": count_parameters(b) for i, b in enumerate(real["unet"].up_blocks)})
        blocks["conv_in/out, time emb."] = (unet_parts["conv_in"] + unet_parts["conv_out"]
                                            + unet_parts["time_embedding"] + unet_parts.get("conv_norm_out", 0))

        fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [1, 1.5]})
        axes[0].barh(list(counts)[::-1], [counts[k] / 1e6 for k in list(counts)[::-1]], color=["C2", "C1", "C0"])
        for i, k in enumerate(list(counts)[::-1]):
            axes[0].text(counts[k] / 1e6, i, f" {counts[k] / 1e6:.1f}M", va="center")
        axes[0].set_xlabel("parameters (millions)")
        axes[0].set_xlim(0, 1100)
        axes[0].set_title("SD v1.5: the three networks")
        axes[1].barh(list(blocks)[::-1], [v / 1e6 for v in list(blocks.values())[::-1]], color="C0")
        axes[1].set_xlabel("parameters (millions)")
        axes[1].set_title("inside the UNet (channels 320 / 640 / 1280 / 1280)")
        fig.tight_layout()
        fig.savefig(OUT / "sd15_parameters.png", dpi=90)
    '''), md('''
        The UNet holds 80% of the weights, and most of them sit at the two deepest levels (1280 channels, 16 x 16
        and 8 x 8 latents), where attention is cheap because there are few positions.

        ### A correction: SD v1 uses CLIP **ViT-L/14**, not ViT-B/32

        An earlier draft of this course (and many blog posts) says SD v1 conditions on CLIP ViT-B/32. It does
        not: it uses the text tower of OpenAI's CLIP **ViT-L/14** (width 768, 12 layers, 12 heads, 123M
        parameters). ViT-B/32's text tower is 512 wide (63M parameters). The configs settle it: the UNet's
        cross-attention keys and values are projections *from 768 dimensions*. (SD 2.x later switched to
        OpenCLIP ViT-H/14, width 1024.)
    '''), code('''
        from transformers import CLIPTextConfig, CLIPTextModel

        # the text tower of CLIP ViT-B/32 (openai/clip-vit-base-patch32), for comparison
        vit_b32_text = CLIPTextConfig(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                                      num_attention_heads=8, max_position_embeddings=77, vocab_size=49408)
        with torch.device("meta"):
            b32 = CLIPTextModel(vit_b32_text)
        to_k = real["unet"].down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k
        print(f"SD v1.5 text encoder (ViT-L/14 text tower): width {configs['text_encoder']['hidden_size']}, "
              f"{counts['text_encoder'] / 1e6:.1f}M parameters")
        print(f"CLIP ViT-B/32 text tower:                   width {vit_b32_text.hidden_size}, "
              f"{count_parameters(b32) / 1e6:.1f}M parameters")
        print(f"UNet cross-attention to_k: {to_k}  <- reads {to_k.in_features}-dimensional text vectors")
        del real, b32
    '''), md('''
        ## 2. Load the model

        `load_sd_components` loads the five parts (UNet, VAE, text encoder, tokenizer, scheduler) from the hub at
        a pinned commit, in fp16 on a GPU, and skips the 1.2 GB safety checker. Here `MODEL = "auto"` picks the
        real model only when a GPU is present and not in FAST mode; if the download fails (no network) the
        cell says so and continues with the tiny twin.
    '''), code(LOAD_MODEL, '''

        if MODEL == "auto":
            MODEL = "tiny" if FAST or DEVICE == "cpu" else DEFAULT_MODEL_ID
        dtype = torch.float16 if DEVICE == "cuda" else None   # fp16 halves the memory of the real model
        components, SOURCE, IS_TINY = load_model(MODEL, REVISION, dtype)
        if IS_TINY:
            # the twin was built for 8 x 8 latents; keep its native size, and fewer steps in FAST mode
            HEIGHT = WIDTH = components.vae_scale_factor * components.unet.config.sample_size
            STEPS = 10 if FAST else STEPS
            STEP_COUNTS = (4, 8) if FAST else STEP_COUNTS
            print(f"TINY TWIN ({SOURCE}): the same classes and code path as SD v1.5, random weights, "
                  f"{HEIGHT} x {WIDTH} px.\\nOn a Colab GPU the same cells run the real {DEFAULT_MODEL_ID}.")
        else:
            print(f"REAL MODEL: {SOURCE} at revision {REVISION}, {HEIGHT} x {WIDTH} px, dtype {components.unet.dtype}")
        for name in ("unet", "vae", "text_encoder"):
            model = getattr(components, name)
            print(f"  {name:>12}: {type(model).__name__:<22} {count_parameters(model) / 1e6:9.2f}M parameters")
        print(f"  {'tokenizer':>12}: {type(components.tokenizer).__name__:<22} "
              f"{len(components.tokenizer)} tokens, max length {components.tokenizer.model_max_length}")
        print(f"  {'scheduler':>12}: {type(components.scheduler).__name__}")
    '''), md('''
        ### The VAE: f = 8, 4 channels, and the scaling factor

        The encoder maps an image to a diagonal Gaussian $q(z \\mid x)$; we use its mean. Latents of the real VAE
        have a standard deviation of about 5.5, so SD multiplies them by **0.18215** $\\approx 1/5.49$ before
        diffusion: the diffusion process assumes data of roughly unit variance, the same scale as the noise
        $\\epsilon \\sim \\mathcal{N}(0, I)$. The authors measured that number once on a batch of training
        images; the cell below measures it the same way on a few shape pictures. (The twin's VAE is random, so
        its value means nothing, and its reconstruction is not the input.)
    '''), code('''
        vae = components.vae
        n_images = 2 if FAST else 8
        x = shapes_batch(n_images, seed=1, image_size=HEIGHT)["image"].to(DEVICE, vae.dtype)   # (B, 3, H, W)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean                     # (B, 4, H/8, W/8)
            x_rec = vae.decode(z).sample.clamp(-1, 1)              # (B, 3, H, W)
        print(f"image {tuple(x.shape)} -> latent {tuple(z.shape)} -> reconstruction {tuple(x_rec.shape)}")
        print(f"latent std over {n_images} images: {z.float().std():.3f}  ->  1/std = {1 / z.float().std():.4f}   "
              f"(config scaling_factor: {vae.config.scaling_factor})")

        fig, axes = plt.subplots(1, 6, figsize=(12, 2.3))
        axes[0].imshow((x[0].float().cpu().permute(1, 2, 0) + 1) / 2)
        axes[0].set_title("image x")
        limit = z[0].abs().max().item()
        for c in range(4):
            axes[1 + c].imshow(z[0, c].float().cpu(), cmap="RdBu_r", vmin=-limit, vmax=limit)
            axes[1 + c].set_title(f"latent channel {c}")
        axes[5].imshow((x_rec[0].float().cpu().permute(1, 2, 0) + 1) / 2)
        axes[5].set_title("decode(encode(x))")
        for ax in axes:
            ax.set_axis_off()
        fig.tight_layout()
        fig.savefig(OUT / "vae_latents.png", dpi=90)
    '''), md('''
        ## 3. The pipeline, written by hand

        Text-to-image sampling is five steps, each one a diffusers part:

        1. **Tokenize** each prompt with CLIP's tokenizer: `<|startoftext|>`, the word pieces,
           `<|endoftext|>`, then padding to exactly 77 tokens.
        2. **Encode**: the text encoder turns the 77 tokens into $c = \\tau_\\theta(y)$, 77 vectors (one per
           token, *not* a single pooled vector); the UNet cross-attends to all of them.
        3. **Classifier-free guidance batch**: encode the empty prompt too and run the UNet once on the doubled
           batch, unconditional rows first (diffusers' order). Combine
           $$\\hat\\epsilon = \\epsilon_\\theta(z_t, t, \\varnothing) + w\\,\\big(\\epsilon_\\theta(z_t, t, c) - \\epsilon_\\theta(z_t, t, \\varnothing)\\big).$$
        4. **Scheduler loop**: start from $z_T \\sim \\mathcal{N}(0, I)$ (times `init_noise_sigma`),
           and at every timestep let `scheduler.step` turn $\\hat\\epsilon$ into the next, less noisy latent.
        5. **Decode**: $x = \\mathcal{D}(z_0 / 0.18215)$.
    '''), code('''
        tokenizer = components.tokenizer
        ids = tokenizer(PROMPTS[0], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True).input_ids
        length = ids.index(tokenizer.eos_token_id) + 1
        print(f"{len(ids)} token ids; the first {length} carry the prompt, the rest are padding "
              f"(id {tokenizer.pad_token_id}):")
        print(tokenizer.convert_ids_to_tokens(ids[:length]))
    '''), md('''
        The real tokenizer knows 49,408 word pieces ("water", "color</w>"); the twin's knows about 700 (a few toy
        words plus single bytes), so it spells unknown words out byte by byte. Both pad to 77.
    '''), code('''
        @torch.no_grad()
        def encode_text(components, prompts: list[str]) -> torch.Tensor:
            """c = tau_theta(prompts): (B, 77, D), one vector per token (the last hidden state)."""
            tok, encoder = components.tokenizer, components.text_encoder
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids                                           # (B, 77)
            return encoder(ids.to(encoder.device))[0]


        @torch.no_grad()
        def sample_by_hand(components, scheduler, prompts, seed, num_inference_steps=30, guidance_scale=7.5,
                           height=512, width=512, on_step=None) -> torch.Tensor:
            """Text -> images (B, 3, H, W) in [-1, 1], the way StableDiffusionPipeline does it."""
            unet, vae = components.unet, components.vae
            # 1-3. text embeddings for the CFG batch: the empty prompt first, then the prompts    (2B, 77, D)
            context = torch.cat([encode_text(components, [""] * len(prompts)), encode_text(components, prompts)])
            # 4. z_T: drawn on the CPU in the UNet's dtype, so a seed gives the same picture on any device
            f = components.vae_scale_factor
            shape = (len(prompts), unet.config.in_channels, height // f, width // f)           # (B, 4, H/8, W/8)
            generator = torch.Generator("cpu").manual_seed(seed)
            latents = torch.randn(shape, generator=generator, dtype=unet.dtype).to(unet.device)
            scheduler.set_timesteps(num_inference_steps, device=unet.device)
            latents = latents * scheduler.init_noise_sigma
            for i, t in enumerate(scheduler.timesteps):
                model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)   # (2B, 4, h, w)
                eps_uncond, eps_cond = unet(model_input, t, encoder_hidden_states=context).sample.chunk(2)
                out = scheduler.step(cfg_combine(eps_uncond, eps_cond, guidance_scale), t, latents)
                latents = out.prev_sample
                if on_step is not None:
                    on_step(i, t, out)
            # 5. undo the scaling factor, decode
            images = vae.decode(latents / vae.config.scaling_factor).sample                     # (B, 3, H, W)
            return images.clamp(-1, 1).float().cpu()
    '''), md('''
        Now the same prompts and seed through `StableDiffusionPipeline` (built from the very same modules by
        `components.pipeline()`), and the two results side by side. The pipeline returns images in $[0, 1]$; we
        map them to the course's $[-1, 1]$.
    '''), code('''
        pipe = components.pipeline()
        pipe.set_progress_bar_config(disable=IS_TINY)

        t0 = time.perf_counter()
        ours = sample_by_hand(components, components.scheduler, PROMPTS, SEED, STEPS, GUIDANCE, HEIGHT, WIDTH)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = pipe(PROMPTS, generator=torch.Generator("cpu").manual_seed(SEED), num_inference_steps=STEPS,
                      guidance_scale=GUIDANCE, height=HEIGHT, width=WIDTH, output_type="pt").images
        theirs = theirs.float().cpu() * 2 - 1
        t_theirs = time.perf_counter() - t0

        diff = (ours - theirs).abs()
        print(f"by hand: {t_ours:.1f} s, pipeline: {t_theirs:.1f} s, {STEPS} steps, {len(PROMPTS)} images")
        print(f"max |ours - pipeline| = {diff.max():.2e} on a range of 2 "
              f"({'fp32: identical up to rounding' if components.unet.dtype == torch.float32 else 'fp16 on a GPU: tiny differences come from kernel choices'})")
        assert diff.max() < (1e-4 if components.unet.dtype == torch.float32 else 5e-2)

        titles = [f"by hand: {p}" for p in PROMPTS] + [f"pipeline: {p}" for p in PROMPTS]
        fig = show_images(torch.cat([ours, theirs]), titles=titles, ncols=len(PROMPTS), figsize=(3.2 * len(PROMPTS), 6.8))
        fig.savefig(OUT / "by_hand_vs_pipeline.png", dpi=80)
    '''), md('''
        ### Watching the sampler work

        DDIM's `step` also returns $\\hat x_0$ (`pred_original_sample`), the model's current guess of the clean
        latent. Decoding it every few steps shows the picture appear: layout first, details last.
    '''), code('''
        from diffusers import DDIMScheduler

        ddim = DDIMScheduler.from_config(components.scheduler.config)
        guesses, times = [], []
        every = max(1, STEPS // 5)

        def keep_x0(i, t, out):
            if i % every == 0 or i == STEPS - 1:
                guesses.append(out.pred_original_sample[:1])
                times.append(int(t))

        sample_by_hand(components, ddim, PROMPTS[:1], SEED, STEPS, GUIDANCE, HEIGHT, WIDTH, on_step=keep_x0)
        with torch.no_grad():
            decoded = [vae.decode(g / vae.config.scaling_factor).sample.clamp(-1, 1).float().cpu() for g in guesses]
        print(f"decoded x0_hat at the DDIM steps with t = {times}")
        fig = plot_trajectory(decoded, times, max_images=1)
        fig.savefig(OUT / "ddim_x0_trajectory.png", dpi=80, bbox_inches="tight")
    '''), md('''
        ## 4. Swapping the sampler

        The UNet was trained once, for one noise schedule ($\\beta$ from 0.00085 to 0.012, "scaled linear",
        $T = 1000$). A sampler is only a rule for walking from $z_T$ to $z_0$ with the UNet's predictions, so
        any sampler that reads the **same schedule** can replace the default. `SchedulerClass.from_config(
        pipe.scheduler.config)` does exactly that: it copies the betas and timestep settings and ignores
        what the new class does not use.

        | sampler | idea | typical steps |
        |---|---|---|
        | PNDM (SD's default) | pseudo linear multistep: reuses the last 4 noise predictions | 50 |
        | DDIM | the deterministic non-Markovian sampler of lecture 3 | 50 |
        | Euler | Euler steps on the probability-flow ODE in Karras' $\\sigma$ parameterisation; starts from $\\sigma_{max} \\approx 14.6$ | 30-50 |
        | DPM-Solver++ (2M) | second-order multistep ODE solver in $\\hat x_0$ form; good images in 20-25 steps | 20-25 |
    '''), code('''
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

        config = components.scheduler.config
        SCHEDULERS = {
            "PNDM": PNDMScheduler.from_config(config),
            "DDIM": DDIMScheduler.from_config(config),
            "Euler": EulerDiscreteScheduler.from_config(config),
            "DPM-Solver++": DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
        }
        n = STEP_COUNTS[-1]
        fig, ax = plt.subplots(figsize=(7, 3.3))
        for name, scheduler in SCHEDULERS.items():
            scheduler.set_timesteps(n)
            steps = scheduler.timesteps.float().tolist()
            ax.plot(range(len(steps)), steps, "o-", ms=3, label=f"{name}: {len(steps)} UNet calls, "
                    f"init_noise_sigma {float(scheduler.init_noise_sigma):.3g}")
            print(f"{name:>13}: {[round(s) for s in steps]}")
        ax.set_xlabel("step")
        ax.set_ylabel("timestep t")
        ax.set_title(f"which timesteps each sampler visits with num_inference_steps = {n}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(OUT / "scheduler_timesteps.png", dpi=90)
    '''), md('''
        All four read the training schedule, and `from_config` also hands them SD's `timestep_spacing =
        "leading"`: PNDM, DDIM and Euler visit 901, 801, ..., 1 for 10 steps, while DPM-Solver++ builds its
        own grid and takes its last step to a noise-free latent. PNDM's first step needs one extra UNet call; Euler works
        with $\sigma_t = \sqrt{(1 - \bar\alpha_t)/\bar\alpha_t}$ and starts from noise of that size, hence its
        `init_noise_sigma`. (Passing `timestep_spacing="trailing"` to `from_config` starts at $t = 999$, which
        helps at very few steps; Lin et al. 2024 explain why.) Same prompt and seed, four samplers, two step
        counts:
    '''), code('''
        images, labels, seconds = [], [], {}
        for name, scheduler in SCHEDULERS.items():
            for steps in STEP_COUNTS:
                t0 = time.perf_counter()
                images.append(sample_by_hand(components, scheduler, PROMPTS[:1], SEED, steps, GUIDANCE, HEIGHT, WIDTH))
                seconds[name, steps] = time.perf_counter() - t0
        grid = torch.cat(images)
        save_image_grid(grid, OUT / "samplers.png", nrow=len(STEP_COUNTS), row_labels=list(SCHEDULERS),
                        col_labels=[f"{s} steps" for s in STEP_COUNTS])
        fig = show_images(grid, titles=[f"{name}, {s} steps ({seconds[name, s]:.1f} s)" for name in SCHEDULERS
                                        for s in STEP_COUNTS], ncols=2 * len(STEP_COUNTS),
                          figsize=(2.6 * 2 * len(STEP_COUNTS), 5.6))
    '''), md('''
        On the real model, DDIM and PNDM at 10 steps are still soft, while Euler and DPM-Solver++ are already
        close to their 25-step result: fewer steps is the cheapest speed-up there is.

        Try it yourself: pick a sampler and a step count and press *Run Interact* (the widget does nothing until
        you press it, so the notebook also runs without a browser).
    '''), code('''
        def show_sampler(sampler="DPM-Solver++", steps=20, guidance_scale=GUIDANCE, seed=SEED):
            t0 = time.perf_counter()
            image = sample_by_hand(components, SCHEDULERS[sampler], PROMPTS[:1], seed, steps, guidance_scale,
                                   HEIGHT, WIDTH)
            fig = show_images(image, titles=[f"{sampler}, {steps} steps, w={guidance_scale:g}, seed {seed} "
                                             f"({time.perf_counter() - t0:.1f} s)"], figsize=(4, 4.4))
            plt.show()

        try:
            import ipywidgets as widgets
            widgets.interact_manual(show_sampler, sampler=list(SCHEDULERS),
                                    steps=widgets.IntSlider(value=20, min=2, max=50, step=1),
                                    guidance_scale=widgets.FloatSlider(value=GUIDANCE, min=0, max=15, step=0.5),
                                    seed=widgets.IntText(value=SEED))
        except ImportError:
            print("ipywidgets is not installed: call show_sampler('Euler', 15) directly instead.")
    '''), md('''
        ## 5. Fitting SD into a small GPU

        Memory at inference goes to the weights (1.07B parameters: 4.3 GB in fp32, 2.1 GB in fp16), to the
        attention matrices ($4096 \\times 4096$ per head at the 64 x 64 level of a 512 x 512 image), and to the VAE
        decoder's full-resolution activations. Each switch below trades a little time for memory, never image
        quality (fp16 changes the last bits of the numbers, tiling a little more, see below). Published figures
        from the diffusers documentation (*"Memory and speed"*, 2023; measured by its authors, not here):

        | switch | code | published effect |
        |---|---|---|
        | half precision | `from_pretrained(..., torch_dtype=torch.float16)` | 512 x 512, 50 DDIM steps on a TITAN RTX: 9.50 s in fp32 -> 3.61 s in fp16; half the weight memory |
        | memory-efficient attention | PyTorch 2's SDPA (diffusers' default) or xFormers | T4, fp16: 3.5 -> 5.5 it/s |
        | attention slicing | `pipe.enable_attention_slicing()` | about 10% slower; SD in "as little as 3.2 GB of VRAM" |
        | VAE slicing | `pipe.vae.enable_slicing()` | decodes a batch one image at a time: batches of 32+ images; no cost for one image |
        | VAE tiling | `pipe.vae.enable_tiling()` | decodes overlapping tiles: 4k images in 8 GB of VRAM; off at 512 x 512 and below |
        | model CPU offload | `pipe.enable_model_cpu_offload()` | whole networks move to the GPU only while used: negligible slowdown, some saving |
        | sequential CPU offload | `pipe.enable_sequential_cpu_offload()` | streams sub-modules: below 3 GB (below 2 GB with attention slicing), but much slower |

        (In diffusers 0.42 VAE slicing and tiling are switched on the VAE itself, `pipe.vae.enable_slicing()`;
        older docs call `pipe.enable_vae_slicing()`.) The cell below checks the switches on whatever model is
        loaded: the picture must stay the same, and on a GPU it also measures peak memory *on this runtime*.
    '''), code('''
        weights = sum(count_parameters(getattr(components, n)) for n in ("unet", "vae", "text_encoder"))
        print(f"weights of the loaded model: {weights / 1e6:.2f}M parameters = {weights * 4 / 2**20:,.1f} MiB in fp32, "
              f"{weights * 2 / 2**20:,.1f} MiB in fp16")

        memory_steps = 5 if (FAST or IS_TINY) else 20

        def run_once():
            if DEVICE == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            image = generate(pipe, PROMPTS[0], SEED, num_inference_steps=memory_steps, guidance_scale=GUIDANCE,
                             height=HEIGHT, width=WIDTH)
            peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")
            return image, time.perf_counter() - t0, peak

        switches = {
            "attention slicing": (pipe.enable_attention_slicing, pipe.disable_attention_slicing),
            "VAE slicing": (pipe.vae.enable_slicing, pipe.vae.disable_slicing),
        }
        baseline, seconds, peak = run_once()
        rows = [("baseline", seconds, peak, 0.0)]
        for name, (on, off) in switches.items():
            on()
            image, seconds, peak = run_once()
            off()
            rows.append((name, seconds, peak, (image - baseline).abs().max().item()))

        # VAE tiling only acts above the VAE's tile size (512 px for SD), so decode a latent twice as large
        big = torch.randn(1, 4, 2 * HEIGHT // 8, 2 * WIDTH // 8, generator=torch.Generator().manual_seed(0))
        big = big.to(DEVICE, vae.dtype)
        with torch.no_grad():
            whole = vae.decode(big).sample.float().cpu()
            vae.enable_tiling()
            tiled = vae.decode(big).sample.float().cpu()
            vae.disable_tiling()
        print(f"VAE tiling on a {2 * HEIGHT} x {2 * WIDTH} decode: |tiled - whole| is {(tiled - whole).abs().mean():.3f} "
              f"on average, {(tiled - whole).abs().max():.3f} at most (on a range of 2).\\n  Tiles are decoded "
              f"separately and blended: the real VAE changes pixels slightly near the seams; the random twin's "
              f"decoder has no notion of a smooth image, so its tiles disagree much more.")

        if DEVICE == "cuda":
            try:
                pipe.enable_model_cpu_offload()
                image, seconds, peak = run_once()
                rows.append(("model CPU offload", seconds, peak, (image - baseline).abs().max().item()))
                pipe.remove_all_hooks()
                pipe.to(DEVICE)
            except (ImportError, RuntimeError) as err:
                print(f"model CPU offload not available here: {err}")

        print(f"\\n{'switch':<20}{'time (s)':>10}{'peak GPU GiB':>14}{'max |diff|':>12}   ({memory_steps} steps)")
        for name, seconds, peak, diff in rows:
            print(f"{name:<20}{seconds:>10.2f}{peak:>14.2f}{diff:>12.2e}")
        if DEVICE != "cuda":
            print("(peak memory is measured on a GPU only; on this CPU the check is that the pictures stay the same)")
    '''), quiz([
        ("An image 768 pixels high and 512 wide goes into SD v1.5's VAE. What is the shape of its latent, and how many latent "
         "numbers is that compared to pixels?",
         "(4, 96, 64): f = 8 in both directions, 4 channels. 4 * 96 * 64 = 24,576 numbers against "
         "3 * 768 * 512 = 1,179,648, 48x fewer."),
        ("Why does SD multiply latents by 0.18215 before diffusion and divide by it before decoding?",
         "The forward process mixes the data with unit-variance noise, sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps; "
         "the schedule was designed for data of about unit variance. The raw VAE latents have a standard "
         "deviation of about 5.5, and 0.18215 is about 1/5.49, measured once on training images."),
        ("Someone replaces SD v1.5's text encoder by CLIP ViT-B/32's text tower. Which layer fails first, "
         "and why?",
         "The UNet's cross-attention projections to_k and to_v are Linear(768, d): they expect 768-dimensional "
         "token vectors (CLIP ViT-L/14's width), and ViT-B/32's text tower outputs 512-dimensional ones. Even "
         "with a projection the UNet was trained on ViT-L/14's embedding space, so it would need retraining."),
        ("In the classifier-free guidance batch, what would go wrong if you put the conditional rows first "
         "but kept `eps_uncond, eps_cond = out.chunk(2)`?",
         "The two halves would be swapped, so the update becomes eps_c + w (eps_u - eps_c): guidance would push "
         "*away* from the prompt. The batch order and the unpacking must agree (diffusers: unconditional first)."),
        ("Why can you swap PNDM for DPM-Solver++ without retraining, and what must the two agree on?",
         "The UNet only predicts the noise at a given timestep of the training schedule; a sampler is a rule "
         "for stepping with those predictions. They must agree on the training noise schedule (betas, "
         "num_train_timesteps, prediction_type), which from_config copies."),
        ("Attention slicing costs about 10% in time. When is it worth it, and when not any more?",
         "When the attention matrices dominate memory on a small GPU (e.g. 4 GB cards). With PyTorch 2's fused "
         "scaled_dot_product_attention (diffusers' default) the full attention matrix is never stored, so "
         "slicing rarely helps on current setups."),
    ])]
    return stem, cells



# ======================================================================================================
# Lecture 08: fine-tuning and LoRA
# ======================================================================================================

def lecture_08():
    stem = "08_fine_tuning_and_lora"
    cells = [md(f"""
        # Lecture 8 - Fine-tuning Stable Diffusion: full fine-tuning vs LoRA

        {badge(stem)}

        You have a 1-billion-parameter model and 20 pictures of your dog. Fine-tuning all 860M UNet weights
        needs a big GPU and produces a 3.4 GB file per concept. LoRA (Hu et al. 2021) trains less than 0.1% of
        that and produces a 3 MB file that can be switched on, off, scaled and mixed with others.

        **What you will learn**
        - how many numbers full fine-tuning and LoRA train: $r(d + k)$ per layer instead of $dk$; 797,184 in
          total for SD's UNet at rank 4, against 859.5M;
        - why $B$ starts at zero (the model is unchanged at step 0, and only $B$ moves in the first step);
        - where LoRA goes in SD (the attention projections `to_q`, `to_k`, `to_v`, `to_out.0`);
        - merging and unmerging (same outputs, no extra cost at inference), the scaling $\\alpha / r$ and the
          LoRA scale at inference time, composing two LoRAs;
        - a short LoRA training run with `course_lib.sd.train_lora`, then the hand-over to the workshop
          (lecture 10), where you train one on the real SD v1.5.

        **Prerequisites:** lecture 7 (the components of SD v1.5), lecture 5 (cross-attention).

        **Which model runs.** Everything here runs on a CPU: SD's sizes are counted on PyTorch's meta device (no
        weights), and the mechanics run on the tiny random-weight twin of SD v1.5 (`build_tiny_sd`: the same
        diffusers classes, layer names and LoRA file format). Its pictures are textures, not photos: what we
        check is that the numbers behave as the math says. The real model is the workshop's job.

        **Time:** laptop CPU about 2-3 minutes (about 1 minute with `FAST = True`); Colab about the same.
    """), SETUP, code("""
        FAST = False               # CI sets FAST = True: fewer training steps and images
        RANK = 4                   # r, the rank of every LoRA update
        ALPHA = None               # lora_alpha; None means alpha = r, so the scaling alpha / r is 1
        TRAIN_STEPS = 400          # LoRA updates on the tiny model (each one image)
        LEARNING_RATE = 1e-3       # the tiny random model needs a larger step than SD's usual 1e-4
        NUM_IMAGES = 32            # pictures of the new concept
        CONCEPT = "a photo of a sks toy"   # "sks": a rare token that the new concept takes over
        SECOND_CONCEPT = "a drawing in dark style"
        SEEDS = (0, 1, 2)
    """, tags=["parameters"]), code(LOCAL_ENV, """
        import matplotlib.pyplot as plt
        import numpy as np
        import torch
        from torch import nn

        from course_lib.data import shapes_batch, write_image_folder
        from course_lib.lora import (LoRAConfig, count_trainable_parameters, inject_lora, load_lora, lora_layers,
                                     lora_parameter_count, merge_lora, remove_lora, set_lora_scale, unmerge_lora)
        from course_lib.sd import (LORA_WEIGHT_NAME, LoRATrainingConfig, build_tiny_sd, count_parameters,
                                   encode_images, encode_prompts, generate, load_pipeline, load_sd_components,
                                   noise_prediction_loss, sd15_empty_model, train_lora)
        from course_lib.viz import plot_losses, show_images

        if FAST:
            TRAIN_STEPS, NUM_IMAGES = 30, 8
        torch.set_num_threads(1)  # tiny layers: one thread is faster than two waiting for each other
        torch.manual_seed(0)
        OUT = Path("outputs/08_fine_tuning_and_lora")
        OUT.mkdir(parents=True, exist_ok=True)
        plt.rcParams["figure.dpi"] = 80          # inline figures: readable, and small enough to keep in git
        TINY = Path("outputs/tiny-sd")
        if not (TINY / "model_index.json").is_file():
            build_tiny_sd(TINY, seed=0)   # the tiny twin of SD v1.5, random weights, a few seconds
        ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
    """), md("""
        ## 1. Full fine-tuning vs LoRA: what gets trained

        Full fine-tuning updates every weight matrix $W \\in \\mathbb{R}^{d \\times k}$ of the UNet. LoRA freezes
        $W_0$ and learns a low-rank change (Hu et al. 2021, eq. 3):
        $$h = W_0 x + \\Delta W x, \\qquad \\Delta W = \\frac{\\alpha}{r} B A, \\qquad
          B \\in \\mathbb{R}^{d \\times r},\\; A \\in \\mathbb{R}^{r \\times k}.$$
        A layer then trains $r(d + k)$ numbers instead of $dk$. For a $1280 \\times 1280$ projection at $r = 4$:
        10,240 instead of 1,638,400 (0.6%). The bet behind LoRA is that the change a fine-tune needs has low
        *intrinsic rank*, which worked for GPT-3 and works remarkably well for SD.

        Below: every attention projection of SD v1.5's UNet (on the meta device), grouped by shape.
    """), code("""
        unet_meta = sd15_empty_model("unet")
        targets = {name: m for name, m in unet_meta.named_modules()
                   if isinstance(m, nn.Linear) and name.endswith(ATTENTION)}
        groups = {}
        for name, layer in targets.items():
            kind = "attn1 (self)" if ".attn1." in name else "attn2 (cross)"
            key = (kind, name.rsplit(".", 1)[-1] if not name.endswith("to_out.0") else "to_out.0",
                   layer.in_features, layer.out_features)
            groups[key] = groups.get(key, 0) + 1

        print(f"{'attention':<14}{'layer':<10}{'k -> d':>14}{'count':>7}{'full: dk':>12}{'LoRA: r(d+k)':>14}")
        total_full = total_lora = 0
        for (kind, layer, k, d), count in sorted(groups.items(), key=lambda item: (item[0][2], item[0][0])):
            full, lora = count * k * d, count * lora_parameter_count(k, d, RANK)
            total_full, total_lora = total_full + full, total_lora + lora
            print(f"{kind:<14}{layer:<10}{f'{k} -> {d}':>14}{count:>7}{full:>12,}{lora:>14,}")
        unet_total = count_parameters(unet_meta)
        print(f"\\n{len(targets)} attention projections hold {total_full:,} of the UNet's {unet_total:,} parameters.")
        print(f"LoRA at rank {RANK} on all of them: {total_lora:,} trainable parameters "
              f"= {100 * total_lora / unet_total:.3f}% of the UNet")
    """), md("""
        The same number, two more ways: from the closed form, and by actually wrapping the meta-device UNet's
        layers with `course_lib.lora.inject_lora` and counting what is left trainable.
    """), code("""
        def closed_form(r, ctx=768):
            # per transformer block of width d: self-attention q,k,v,out are d -> d; cross-attention q,out are
            # d -> d and k,v read the 768-wide text (ctx -> d). SD has 5 blocks at 320, 5 at 640, 6 at 1280.
            block = lambda d: r * (4 * 2 * d + 2 * 2 * d + 2 * (ctx + d))
            return 5 * block(320) + 5 * block(640) + 6 * block(1280)

        wrapped = inject_lora(unet_meta, LoRAConfig(r=RANK, lora_alpha=ALPHA))
        counted = count_trainable_parameters(unet_meta)
        print(f"closed form: {closed_form(RANK):,}   inject_lora + count: {counted:,}   table: {total_lora:,}")
        assert closed_form(RANK) == counted == total_lora
        if RANK == 4:
            assert counted == 797_184
        del unet_meta

        ranks = [1, 2, 4, 8, 16, 32, 64, 128]
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        ax.loglog(ranks, [closed_form(r) for r in ranks], "o-", label="LoRA on to_q/k/v/out (trainable)")
        ax.axhline(unet_total, color="C3", ls="--", label=f"full fine-tuning: {unet_total / 1e6:.1f}M")
        ax.axhline(total_full, color="C1", ls=":", label=f"the attention projections themselves: {total_full / 1e6:.1f}M")
        for r, offset in ((4, (-10, 12)), (128, (-75, 12))):
            ax.annotate(f"r={r}: {closed_form(r):,}\\n({100 * closed_form(r) / unet_total:.2f}%)",
                        (r, closed_form(r)), textcoords="offset points", xytext=offset, fontsize=8)
        ax.set_xlabel("rank r")
        ax.set_ylabel("trainable parameters")
        ax.set_title("SD v1.5 UNet: what fine-tuning trains")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(OUT / "trainable_parameters.png", dpi=90)
    """), md("""
        Parameters are only half the story; **training memory** is where LoRA really pays. AdamW in fp32 keeps,
        for every *trained* number, the weight, its gradient and two moment estimates: 16 bytes. Frozen weights
        need only themselves, in fp16 on a GPU (2 bytes), and no gradient or optimizer state.
    """), code("""
        GiB = 2 ** 30
        full = unet_total * 16 / GiB
        lora = (unet_total * 2 + closed_form(4) * 16) / GiB
        print(f"full fine-tuning, fp32 AdamW: {full:5.2f} GiB for weights + gradients + Adam moments (before activations)")
        print(f"LoRA r=4, frozen fp16 UNet:   {lora:5.2f} GiB ({closed_form(4) * 16 / 2**20:.1f} MiB of it for the LoRA)")
        print(f"the LoRA file at r=4: {closed_form(4) * 4 / 1e6:.2f} MB in fp32 "
              f"(the diffusers authors' published rank-4 file: 3.29 MB) vs {unet_total * 2 / 1e9:.2f} GB for a fp16 UNet")
    """), md("""
        ## 2. $B = 0$: a LoRA changes nothing until it is trained

        $A$ starts random (like an `nn.Linear`) and $B$ starts at zero, so $\\Delta W = \\frac{\\alpha}{r} B A = 0$:
        step 0 of fine-tuning *is* the pretrained model, and training departs from it smoothly. The gradients
        show the asymmetry: $\\partial L / \\partial A = \\frac{\\alpha}{r} B^\\top \\frac{\\partial L}{\\partial h} x^\\top = 0$
        at the start, while $\\partial L / \\partial B = \\frac{\\alpha}{r} \\frac{\\partial L}{\\partial h} (A x)^\\top \\neq 0$.
        (With both at zero neither would ever move; with both random the model would start damaged.)
    """), code("""
        unet = load_sd_components(TINY).unet
        g = torch.Generator().manual_seed(0)
        z = torch.randn(2, 4, 8, 8, generator=g)           # latents (B, 4, 8, 8)
        t = torch.tensor([50, 700])
        context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)   # stand-in text vectors

        with torch.no_grad():
            before = unet(z, t, context).sample
        names = inject_lora(unet, LoRAConfig(r=RANK, lora_alpha=ALPHA), generator=torch.Generator().manual_seed(0))
        out = unet(z, t, context).sample
        print(f"wrapped {len(names)} layers, e.g. {names[0]}:\\n  {lora_layers(unet)[names[0]]}")
        print(f"max |output with fresh LoRA - output without| = {(out - before).abs().max().item()}")
        assert torch.equal(out.detach(), before)

        out.square().mean().backward()
        grad_a = sum(layer.lora_A.weight.grad.abs().sum().item() for layer in lora_layers(unet).values())
        grad_b = sum(layer.lora_B.weight.grad.abs().sum().item() for layer in lora_layers(unet).values())
        print(f"sum |dL/dA| = {grad_a:.3g}    sum |dL/dB| = {grad_b:.3g}    "
              f"trainable: {count_trainable_parameters(unet):,} of {count_parameters(unet):,}")
        unet.zero_grad(set_to_none=True)
    """), md("""
        ## 3. Where LoRA goes in SD

        Each transformer block of the UNet has two attention layers, and LoRA wraps their four projections:

        - `attn1`, **self-attention**: queries, keys and values all come from the image tokens (which part of
          the picture looks at which);
        - `attn2`, **cross-attention**: queries from the image, keys and values from the 77 text vectors. Its
          `to_k` and `to_v` map 768 text dimensions to the block's width; they decide what a word *means* to
          the picture, which is why LoRAs that teach a new word work so well there.

        The convolutions and feed-forward layers stay frozen (LoRA variants such as LoCon also adapt those).
        The names are diffusers' (`down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k`), which is also
        how LoRA files name their tensors.
    """), code("""
        unet_meta = sd15_empty_model("unet")
        per_block = {}
        for name, m in unet_meta.named_modules():
            if isinstance(m, nn.Linear) and name.endswith(ATTENTION):
                block = ".".join(name.split(".")[:2]) if not name.startswith("mid_block") else "mid_block"
                kind = "attn1" if ".attn1." in name else "attn2"
                per_block.setdefault(block, {"attn1": 0, "attn2": 0})[kind] += lora_parameter_count(
                    m.in_features, m.out_features, RANK)
        del unet_meta
        order = [b for b in per_block if b.startswith("down")] + ["mid_block"] + [b for b in per_block if b.startswith("up")]
        fig, ax = plt.subplots(figsize=(7, 3.4))
        left = np.zeros(len(order))
        for kind, colour in (("attn1", "C0"), ("attn2", "C1")):
            values = np.array([per_block[b][kind] for b in order])
            ax.barh(order[::-1], values[::-1] / 1e3, left=left[::-1] / 1e3, color=colour,
                    label={"attn1": "attn1: self-attention", "attn2": "attn2: cross-attention (k, v read text)"}[kind])
            left = left + values
        ax.set_xlabel(f"LoRA parameters at rank {RANK} (thousands)")
        ax.set_title("where SD's LoRA parameters sit (blocks without attention get none)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(OUT / "lora_per_block.png", dpi=90)
    """), md("""
        `down_blocks.3` and `up_blocks.0` have no attention (they work at 8 x 8 with plain ResNet blocks), so
        they get no LoRA.

        ## 4. Merging and unmerging

        After training, $\\Delta W$ can be added into the frozen weight once: $W_0 \\leftarrow W_0 + \\frac{\\alpha}{r} B A$.
        The layer is then an ordinary `nn.Linear` again (no extra matmul at inference), and subtracting the same
        matrix restores $W_0$. To test this we give the adapters of the tiny UNet some "trained" values
        (random $B$), and compare the three ways of computing the output.
    """), code("""
        with torch.no_grad():
            for layer in lora_layers(unet).values():
                layer.lora_B.weight.normal_(0.0, 0.05, generator=g)    # pretend training happened
        base_weights = {n: layer.base_layer.weight.detach().clone() for n, layer in lora_layers(unet).items()}

        with torch.no_grad():
            unmerged = unet(z, t, context).sample
            merge_lora(unet)                          # W0 <- W0 + delta W, in place
            merged = unet(z, t, context).sample
            unmerge_lora(unet)                        # W0 <- W0 - delta W
            restored = unet(z, t, context).sample
        moved = max((layer.base_layer.weight - base_weights[n]).abs().max().item() for n, layer in lora_layers(unet).items())
        print(f"LoRA changes the output by up to {(unmerged - before).abs().max():.3f}")
        print(f"max |merged - unmerged| = {(merged - unmerged).abs().max():.2e}   (float rounding)")
        print(f"after unmerge: max |W - W0| = {moved:.2e}, max |output - unmerged output| = {(restored - unmerged).abs().max():.2e}")
        torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    """), md("""
        ## 5. The scaling $\\alpha / r$, and the LoRA scale at inference

        Two numbers multiply the update, and they play different roles:
        $$h = W_0 x + s \\cdot \\frac{\\alpha}{r} \\, B A x .$$

        - $\\alpha / r$ is fixed at training time. With Adam, each step changes $B$ and $A$ by roughly the
          learning rate, so the size of $BA$'s change grows with $r$; dividing by $r$ keeps the effective step
          the same when you change the rank, so a learning rate tuned at one $r$ still works at another. Hu et
          al. set $\\alpha$ to the first $r$ they tried and never tuned it; diffusers' SD scripts use
          $\\alpha = r$ (scaling 1). If you raise `alpha` you raise the effective learning rate.
        - $s$, the **LoRA scale**, is an inference-time knob: 0 is the base model, 1 the LoRA as trained, 0.5 a
          gentler version, above 1 an exaggerated one. In diffusers: `pipe(..., cross_attention_kwargs={"scale": s})`
          or `pipe.set_adapters(names, adapter_weights=...)`; in the course: `generate(pipe, ..., lora_scale=s)`.

        To see the scale act on something learned, we now train a LoRA.

        ## 6. Training a LoRA on the tiny twin

        The concept: pictures of green triangles (sizes and places vary), all captioned with the same new phrase.
        The tiny tokenizer knows "sks" as one token, like the real one (DreamBooth's favourite rare word).
        `course_lib.data.write_image_folder` writes them in the layout `datasets` reads: `00000.png, ...` plus
        `metadata.jsonl` with one `{"file_name", "text"}` line per image. The workshop uses the same layout for
        your own pictures.
    """), code("""
        concept = shapes_batch(NUM_IMAGES, seed=0, image_size=64, pairs=[("green", "triangle")])
        data_dir = write_image_folder(OUT / "data_sks", concept["image"], [CONCEPT] * NUM_IMAGES, overwrite=True)
        print(f"{data_dir}: {NUM_IMAGES} images, caption {CONCEPT!r}")
        print((data_dir / "metadata.jsonl").read_text().splitlines()[0])
        fig = show_images(concept["image"][:8], titles=[CONCEPT] * min(8, NUM_IMAGES), figsize=(12, 1.9))
    """), md("""
        `train_lora` does what diffusers' `train_text_to_image_lora.py` does, in a loop you can read in
        `course_lib/sd/lora_training.py`: freeze the VAE, text encoder and UNet; wrap the UNet's attention
        projections; then for every step encode an image to $z_0$, draw $t$ and $\\epsilon$, and minimise
        $\\lVert \\epsilon - \\epsilon_\\theta(z_t, t, c) \\rVert^2$ over $A$ and $B$ only. It checkpoints and
        can resume (the workshop uses that).
    """), code("""
        def fresh_dir(path: Path) -> Path:
            shutil.rmtree(path, ignore_errors=True)   # a new run each time (the workshop shows resuming)
            return path

        config = LoRATrainingConfig(dataset=str(data_dir), output_dir=str(fresh_dir(OUT / "lora_sks")),
                                    pretrained_model_name_or_path=str(TINY), resolution=64, rank=RANK, alpha=ALPHA,
                                    learning_rate=LEARNING_RATE, max_train_steps=TRAIN_STEPS,
                                    checkpoint_every=TRAIN_STEPS, seed=0, resume=None)
        components = load_sd_components(TINY)
        t0 = time.perf_counter()
        result = train_lora(config, components)       # injects the LoRA into components.unet, in place
        print(f"{TRAIN_STEPS} steps in {time.perf_counter() - t0:.1f} s; weights: {result.lora_path} "
              f"({result.lora_path.stat().st_size / 1e3:.1f} kB)")
        fig = plot_losses(result.losses, smooth=0.95, title="LoRA training loss (one image per step)")
        fig.savefig(OUT / "lora_loss.png", dpi=90)
    """), md("""
        One image and one random $t$ per step make the curve noisy: the loss at $t$ near 0 is tiny and at $t$
        near 1000 large, whatever the model. A fairer test fixes the noise and the timesteps, and compares the
        same UNet with the LoRA switched off ($s = 0$) and on ($s = 1$), on the concept's images and, as a
        control, on pictures the LoRA never saw (blue circles with their own caption).
    """), code("""
        from diffusers import DDPMScheduler

        noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)

        @torch.no_grad()
        def denoising_loss(images, caption, scale, repeats=8, seed=123):
            g = torch.Generator().manual_seed(seed)       # the same noise and timesteps for every call
            set_lora_scale(components.unet, scale)
            losses = []
            for _ in range(repeats):
                z0 = encode_images(components, images, g)
                c = encode_prompts(components, [caption] * len(images))
                eps = torch.randn(z0.shape, generator=g)
                t = torch.randint(0, 1000, (len(images),), generator=g)
                losses.append(noise_prediction_loss(components.unet, noise_scheduler, z0, c, eps, t).item())
            set_lora_scale(components.unet, 1.0)
            return float(np.mean(losses))

        components.unet.eval()
        other = shapes_batch(8, seed=5, image_size=64, pairs=[("blue", "circle")])["image"]
        table = {"concept images, concept caption": (concept["image"][:8], CONCEPT),
                 "unseen images, their caption": (other, "a blue circle")}
        scores = {name: (denoising_loss(x, c, 0.0), denoising_loss(x, c, 1.0)) for name, (x, c) in table.items()}
        for name, (off, on) in scores.items():
            print(f"{name:<34} LoRA off: {off:.4f}   LoRA on: {on:.4f}   change: {100 * (on - off) / off:+.1f}%")

        fig, ax = plt.subplots(figsize=(6, 3))
        x = np.arange(len(scores))
        ax.bar(x - 0.2, [v[0] for v in scores.values()], 0.4, label="LoRA off (s = 0): the base model")
        ax.bar(x + 0.2, [v[1] for v in scores.values()], 0.4, label="LoRA on (s = 1)")
        ax.set_xticks(x, list(scores))
        ax.set_ylabel("denoising loss, fixed noise")
        ax.set_ylim(0, 1.35 * max(max(v) for v in scores.values()))
        ax.legend(fontsize=8, loc="upper center", ncol=2)
        fig.tight_layout()
        fig.savefig(OUT / "lora_effect.png", dpi=90)
    """), md("""
        On the twin, both losses fall by about the same amount: most of what this LoRA learned is *generic*.
        The random UNet predicts noise of the wrong size and structure for **any** image, so correcting that
        helps everywhere, seen or unseen. A pretrained SD already predicts noise well, so there a LoRA's change
        concentrates on what its images have in common, and a control like this one tells you how much leaked
        into everything else (the workshop's before/after grid does the same with a prompt that does not name
        the concept).

        ### The LoRA scale as a slider

        Same prompt, same seeds, different $s$. The tiny model's pictures are textures, so look at *how much*
        they change rather than at what they show; with the real model (workshop) the concept fades in as $s$
        goes from 0 to 1. The slider below redraws the images for any $s$ (it needs a live notebook; the static
        figure is drawn once so the notebook also reads well without one).
    """), code("""
        pipe = components.pipeline()
        pipe.set_progress_bar_config(disable=True)
        STEPS = 10 if FAST else 25

        def images_at(scale, seeds=SEEDS):
            return generate(pipe, [CONCEPT] * len(seeds), list(seeds), lora_scale=scale, num_inference_steps=STEPS,
                            height=64, width=64)

        def show_scale(scale=1.0):
            fig = show_images(images_at(scale), titles=[f"s = {scale:g}, seed {s}" for s in SEEDS],
                              figsize=(2.2 * len(SEEDS), 2.5))
            plt.show()

        scales = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
        strip = torch.cat([images_at(s, seeds=SEEDS[:1]) for s in scales])
        distance = [(img - strip[0]).abs().mean().item() for img in strip]
        fig, axes = plt.subplots(1, 2, figsize=(11, 2.6), gridspec_kw={"width_ratios": [3, 1]})
        from course_lib.viz import image_grid
        axes[0].imshow(image_grid(strip, nrow=len(scales)))
        axes[0].set_xticks([2 + 66 * i + 32 for i in range(len(scales))], [f"s = {s:g}" for s in scales])
        axes[0].set_yticks([])
        axes[0].set_title(f"{CONCEPT!r}, seed {SEEDS[0]}")
        axes[1].plot(scales, distance, "o-")
        axes[1].set_xlabel("LoRA scale s")
        axes[1].set_ylabel("mean |image(s) - image(0)|")
        fig.tight_layout()
        fig.savefig(OUT / "lora_scale_strip.png", dpi=90)
        plt.show()

        try:
            import ipywidgets as widgets
            widgets.interact(show_scale, scale=widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.1,
                                                                   continuous_update=False))
        except ImportError:
            print("ipywidgets is not installed: call show_scale(0.5) directly instead.")
    """), md("""
        ## 7. Composing two LoRAs

        Two LoRAs trained separately on the same base model are two weight changes, and using both is adding
        both: $W = W_0 + s_1 \\Delta W_1 + s_2 \\Delta W_2$. That is cheap (no retraining) and is how people mix
        a style LoRA with a character LoRA. It can also clash: both edit the same projections, and nothing
        trained them to agree, so in practice one often lowers the scales (e.g. 0.7 each).

        We train a second LoRA (a different concept and caption), then compose them two ways: with diffusers
        (`load_lora_weights` twice with two adapter names, then `set_adapters`), and by hand (merge the first
        into the weights, then add the second). Equal outputs show that diffusers reads the course's LoRA
        files and that composition really is addition.
    """), code("""
        second = shapes_batch(NUM_IMAGES, seed=1, image_size=64, pairs=[("red", "square")])
        data_dir2 = write_image_folder(OUT / "data_dark", second["image"], [SECOND_CONCEPT] * NUM_IMAGES, overwrite=True)
        config2 = LoRATrainingConfig(dataset=str(data_dir2), output_dir=str(fresh_dir(OUT / "lora_dark")),
                                     pretrained_model_name_or_path=str(TINY), resolution=64, rank=RANK, alpha=ALPHA,
                                     learning_rate=LEARNING_RATE, max_train_steps=max(TRAIN_STEPS // 2, 1),
                                     checkpoint_every=TRAIN_STEPS, seed=1, resume=None)
        result2 = train_lora(config2, load_sd_components(TINY))
        print(f"second LoRA: {len(result2.losses)} steps -> {result2.lora_path}")

        # diffusers: two named adapters on a fresh pipeline (it warns that each file lacks the other
        # adapter's keys and has no text-encoder part: expected, so those messages are silenced here)
        from diffusers.utils import logging as diffusers_logging
        diffusers_logging.set_verbosity_error()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = load_pipeline(TINY)
            theirs.load_lora_weights(config.output_dir, weight_name=LORA_WEIGHT_NAME, adapter_name="sks")
            theirs.load_lora_weights(config2.output_dir, weight_name=LORA_WEIGHT_NAME, adapter_name="dark")
        diffusers_logging.set_verbosity_warning()
        theirs.set_progress_bar_config(disable=True)

        # by hand: W0 + delta W1 merged into the weights, then the second LoRA on top
        ours = load_sd_components(TINY)
        lora_config = LoRAConfig(r=RANK, lora_alpha=ALPHA)
        inject_lora(ours.unet, lora_config)
        load_lora(ours.unet, result.lora_path)
        remove_lora(ours.unet, merge=True)           # bake LoRA 1 in: plain nn.Linear layers again
        inject_lora(ours.unet, lora_config)
        load_lora(ours.unet, result2.lora_path)

        for s1, s2 in [(1.0, 1.0), (0.7, 0.5)]:
            theirs.set_adapters(["sks", "dark"], adapter_weights=[s1, s2])
            with torch.no_grad():
                if s1 != 1.0:  # re-bake LoRA 1 at scale s1
                    ours = load_sd_components(TINY)
                    inject_lora(ours.unet, lora_config); load_lora(ours.unet, result.lora_path)
                    set_lora_scale(ours.unet, s1); remove_lora(ours.unet, merge=True)
                    inject_lora(ours.unet, lora_config); load_lora(ours.unet, result2.lora_path)
                set_lora_scale(ours.unet, s2)
                a, b = theirs.unet(z, t, context).sample, ours.unet(z, t, context).sample
            print(f"s1 = {s1}, s2 = {s2}: max |diffusers - ours| = {(a - b).abs().max():.2e}")
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

        grid, labels = [], []
        prompt = "a photo of a sks toy, a drawing in dark style"
        for s1 in (0.0, 1.0):
            for s2 in (0.0, 1.0):
                theirs.set_adapters(["sks", "dark"], adapter_weights=[s1, s2])
                grid.append(theirs(prompt, generator=torch.Generator().manual_seed(SEEDS[0]), num_inference_steps=STEPS,
                                   height=64, width=64, output_type="pt").images * 2 - 1)
                labels.append(f"sks x {s1:g}, dark x {s2:g}")
        fig = show_images(torch.cat(grid), titles=labels, ncols=4, figsize=(9, 2.6))
        fig.savefig(OUT / "two_loras.png", dpi=90)
    """), md("""
        ## 8. On to the workshop

        Everything above ran on a model with random weights, so the loss and the equalities were the evidence,
        not the pictures. Lecture 10, the **LoRA workshop**, runs the same `train_lora` on the real SD v1.5 on a
        Colab T4: your own pictures (or a captioned dataset from the Hub) at 512 x 512, fp16 with a gradient
        scaler, checkpoints copied to Google Drive so that a disconnected runtime resumes where it stopped, and
        a before/after grid with fixed seeds. Things to carry over:

        - rank 4 to 16 and learning rate 1e-4 are good starting points; LoRA tolerates a 10x larger learning
          rate than full fine-tuning (1e-5 or less);
        - use a rare token ("sks") for a new subject, so you do not overwrite a word the model already uses;
        - judge with fixed seeds and several prompts, including prompts *without* your token, to see what else
          the LoRA changed.
    """), quiz([
        ("A linear layer maps 640 to 640 dimensions. How many numbers does full fine-tuning train, and how many "
         "does LoRA at rank 8?",
         "Full: 640 * 640 = 409,600 (plus 640 bias). LoRA: 8 * (640 + 640) = 10,240, 2.5% of it."),
        ("Why is the rank-4 total for SD's UNet exactly 797,184? Which layers contribute the 768?",
         "Sum r(d + k) over the 128 attention projections. Each of the 16 transformer blocks has 8 projections; "
         "all are d -> d except the cross-attention to_k and to_v, which read the 768-wide CLIP tokens: "
         "r (768 + d) each. 5 blocks at 320, 5 at 640 and 6 at 1280 give 797,184."),
        ("What would happen at step 0 if both A and B were initialised at zero? And if both were random?",
         "Both zero: dL/dA and dL/dB are both 0 (each is multiplied by the other), so training never starts. "
         "Both random: delta W != 0, so the fine-tune starts from a damaged model, not from the pretrained one."),
        ("You merge a LoRA at scale 0.8 into the UNet's weights. Can you later use it at scale 1.2? What does "
         "course_lib do?",
         "Only by unmerging first (subtracting exactly what was added, 0.8 delta W) and merging again at 1.2. "
         "LoRALinear.set_scale does exactly that: unmerge with the stored merged scale, change the scale, merge."),
        ("You retrain a LoRA at rank 16 instead of 4 and keep alpha = 4. What happens to the scaling, and what "
         "would you expect if instead alpha = r = 16?",
         "alpha / r drops from 1 to 0.25, which roughly compensates for the larger update of a higher-rank BA: "
         "the same learning rate behaves similarly. With alpha = r = 16 the scaling stays 1 and the effective "
         "learning rate grows with the rank."),
        ("Two LoRAs both look fine alone but together produce a mess. Why can that happen, and what are two "
         "things to try?",
         "Composition adds two weight changes that were trained independently on the same layers; their sum "
         "can push activations into regions neither saw. Lower the scales (e.g. 0.6-0.8 each), or train them "
         "jointly / train the second on top of the first merged in."),
    ])]
    return stem, cells


# ======================================================================================================
# Lecture 09: beyond Stable Diffusion
# ======================================================================================================

def lecture_09():
    stem = "09_beyond"
    cells = [md(f"""
        # Lecture 9 - Beyond Stable Diffusion: cascades, unCLIP, Imagen, DiT, and how to evaluate

        {badge(stem)}

        Stable Diffusion made one set of choices: diffuse in a VAE's latent space, condition a convolutional
        UNet on a frozen CLIP text encoder. Its contemporaries and successors chose differently, and the ideas
        keep coming back (Stable Diffusion 3 and FLUX are transformers on latents, and they use Imagen's kind of
        text encoder next to CLIP's). This lecture runs small versions of the key mechanisms.

        **What you will learn**
        - cascaded diffusion and **noise-conditioning augmentation**: why a super-resolution stage is trained
          on *noisy* low-resolution inputs;
        - unCLIP (DALL-E 2): a **prior** from text embedding to image embedding, and a **decoder** from image
          embedding to pixels;
        - Imagen: a frozen **T5-XXL** text encoder, the Efficient U-Net, and **dynamic thresholding**;
        - DiT: **patchify** latents into tokens, condition a transformer with **adaLN-Zero**; we build one
          block and check that it is the identity at initialisation;
        - evaluation: FID and CLIP score, and why an FID computed on a few hundred images is **biased**, shown
          with the toy world's evaluator.

        **Prerequisites:** lectures 3-7 (DDPM/DDIM, latent diffusion, attention, guidance, SD v1.5).

        **Time:** laptop CPU about 3 minutes (about 1 minute with `FAST = True`); Colab CPU or GPU about the
        same: nothing here needs a GPU.
    """), SETUP, code("""
        FAST = False            # CI sets FAST = True: smaller evaluator, pools and training
        DIT_STEPS = 300         # training steps of the tiny DiT (to watch its gates open)
        POOL = 2048             # images per pool for the FID experiment
        REPEATS = 10            # random subsets per sample size
    """, tags=["parameters"]), code(LOCAL_ENV, """
        import math

        import matplotlib.pyplot as plt
        import numpy as np
        import torch
        import torch.nn.functional as F
        from einops import rearrange
        from matplotlib.patches import FancyBboxPatch
        from torch import nn

        from course_lib.attention import MultiHeadAttention
        from course_lib.data import shapes_batch
        from course_lib.guidance import dynamic_threshold, static_threshold
        from course_lib.metrics import frechet_distance, get_evaluator, train_evaluator
        from course_lib.schedulers import DDPMScheduler
        from course_lib.viz import image_grid, plot_losses, show_images

        if FAST:
            DIT_STEPS, POOL, REPEATS = 30, 512, 4
        torch.set_num_threads(1)  # small tensors: one thread avoids two threads waiting for each other
        torch.manual_seed(0)
        OUT = Path("outputs/09_beyond")
        OUT.mkdir(parents=True, exist_ok=True)
        plt.rcParams["figure.dpi"] = 80          # inline figures: readable, and small enough to keep in git
    """), md("""
        ## 1. Four recipes at a glance

        Every text-to-image system of 2022-2023 is a chain of a text encoder and one or more diffusion models;
        they differ in what is diffused (pixels or latents), at which resolutions, and with which network.
    """), code("""
        def draw_chain(ax, stages, title):
            \"\"\"One row of boxes joined by arrows: stages = [(label, detail, colour), ...].\"\"\"
            ax.set_xlim(0, len(stages))
            ax.set_ylim(0, 1)
            ax.set_axis_off()
            ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
            for i, (label, detail, colour) in enumerate(stages):
                ax.add_patch(FancyBboxPatch((i + 0.06, 0.12), 0.8, 0.76, boxstyle="round,pad=0.02",
                                            facecolor=colour, edgecolor="0.3"))
                ax.text(i + 0.46, 0.62, label, ha="center", va="center", fontsize=8.5, fontweight="bold")
                ax.text(i + 0.46, 0.32, detail, ha="center", va="center", fontsize=7.5)
                if i + 1 < len(stages):
                    ax.annotate("", xy=(i + 1.05, 0.5), xytext=(i + 0.88, 0.5),
                                arrowprops=dict(arrowstyle="->", lw=1.4))

        TEXT, PRIOR, DIFF, DEC = "#d8e8f8", "#f8e2c8", "#d9f0d3", "#eadcf2"
        chains = {
            "Stable Diffusion v1 (latent diffusion)": [
                ("prompt", "77 tokens", "white"), ("CLIP ViT-L/14", "frozen, 123M\\n77 x 768", TEXT),
                ("UNet in latent space", "860M, 4 x 64 x 64", DIFF), ("VAE decoder", "f = 8", DEC),
                ("image", "512 x 512", "white")],
            "unCLIP / DALL-E 2 (pixel cascade)": [
                ("prompt", "", "white"), ("CLIP text encoder", "frozen", TEXT),
                ("prior", "text emb. ->\\nimage emb.", PRIOR), ("decoder", "64 x 64 pixels", DIFF),
                ("2 upsamplers", "-> 256 -> 1024", DIFF), ("image", "1024 x 1024", "white")],
            "Imagen (pixel cascade)": [
                ("prompt", "", "white"), ("T5-XXL", "frozen, 4.6B\\ntext-only", TEXT),
                ("base model", "64 x 64 pixels", DIFF), ("super-res", "-> 256", DIFF),
                ("super-res", "-> 1024", DIFF), ("image", "1024 x 1024", "white")],
            "DiT (transformer on latents)": [
                ("class y, time t", "adaLN-Zero", "white"), ("patchify", "32 x 32 x 4 ->\\n256 tokens (p=2)", PRIOR),
                ("transformer", "N blocks,\\nno convolutions", DIFF), ("unpatchify", "-> noise", PRIOR),
                ("VAE decoder", "SD's VAE", DEC), ("image", "256 x 256", "white")],
        }
        fig, axes = plt.subplots(len(chains), 1, figsize=(12, 1.45 * len(chains)))
        for ax, (title, stages) in zip(axes, chains.items()):
            draw_chain(ax, stages, title)
        fig.tight_layout()
        fig.savefig(OUT / "four_recipes.png", dpi=90)
    """), md("""
        ## 2. Cascaded diffusion and noise-conditioning augmentation

        A **cascade** (Ho et al. 2021, "Cascaded Diffusion Models", CDM) generates a small image with a base
        model and enlarges it with one or more *conditional* diffusion models: the super-resolution stage
        learns $p(x_{hi} \\mid x_{lo})$ and sees the upsampled low-resolution image as extra input channels.
        Each stage is small and specialised; CDM reached FID 4.88 on class-conditional ImageNet 256 x 256
        without any classifier guidance.

        The catch is a **train/test mismatch**. During training the super-resolution model sees *real*
        downsampled images; at sampling time it sees the base model's output, which has its own artefacts
        (wrong textures, slightly off colours). A model trained on clean inputs trusts every pixel and
        enlarges the artefacts. **Noise-conditioning augmentation** fixes this: during training, corrupt the
        condition with the forward process at a random level $s$,
        $$\\tilde x_{lo} = \\sqrt{\\bar\\alpha_s}\\, \\mathrm{up}(x_{lo}) + \\sqrt{1 - \\bar\\alpha_s}\\, \\epsilon,$$
        and give $s$ to the model as a second conditioning signal. The model learns not to trust details below
        the noise level. At sampling time one picks a fixed $s$ (CDM and Imagen sweep it), large enough that
        the base model's artefacts are drowned, small enough that the layout survives.
    """), code("""
        hi = shapes_batch(1, seed=4, image_size=64)["image"]                  # the high-res target (1, 3, 64, 64)
        lo = F.interpolate(hi, size=16, mode="area")                            # what a base model should produce
        g = torch.Generator().manual_seed(0)
        # a plausible base-model output: the right layout, slightly off colours, and some texture
        lo_model = (lo + 0.15 * torch.randn(lo.shape, generator=g) + torch.tensor([0.1, -0.1, 0.05]).view(1, 3, 1, 1))
        lo_model = lo_model.clamp(-1, 1)
        up = lambda x: F.interpolate(x, size=64, mode="bilinear", align_corners=False)   # up(x_lo)

        schedule = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        levels = [0, 100, 250, 400, 600]
        eps = torch.randn(hi.shape, generator=g)        # the same noise for both rows
        rows = []
        for low in (lo, lo_model):
            rows += [schedule.add_noise(up(low), eps, torch.tensor([s])) if s > 0 else up(low) for s in levels]
        fig = show_images(torch.cat(rows), titles=[f"{kind}, s = {s}" for kind in ("real low-res", "base model's")
                                                   for s in levels], ncols=len(levels), figsize=(10, 4.4))
        fig.savefig(OUT / "noise_conditioning_augmentation.png", dpi=90)

        # how visible is the difference between the two conditions, relative to the augmentation noise?
        abar = schedule.alphas_cumprod
        delta = (up(lo_model) - up(lo)).pow(2).mean().sqrt()                   # RMS of the base model's error
        s_axis = torch.arange(1, 1000)
        visibility = abar[s_axis].sqrt() * delta / (1 - abar[s_axis]).sqrt()
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.semilogy(s_axis, visibility)
        ax.axhline(1, color="0.5", ls="--")
        ax.set_xlabel("augmentation level s")
        ax.set_ylabel("error / noise (RMS)")
        ax.set_title("the base model's error disappears under the augmentation noise")
        fig.tight_layout()
        fig.savefig(OUT / "augmentation_visibility.png", dpi=90)
        print(f"RMS difference between the real and the base model's low-res input: {delta:.3f}; "
              f"it falls below the noise at s = {int(s_axis[visibility < 1][0])}")
    """), md("""
        ## 3. unCLIP (DALL-E 2): a prior and a decoder

        CLIP gives a shared space for captions and images, but a caption's embedding $z_t$ is not an image's
        embedding $z_i$: many images fit one caption, and the two modalities occupy different regions of the
        space (the "modality gap"). unCLIP (Ramesh et al. 2022) splits generation in two:

        1. the **prior** $p(z_i \\mid y)$ produces a CLIP *image* embedding from the caption (they tried an
           autoregressive prior and a diffusion prior: a decoder-only transformer that denoises $z_i$,
           conditioned on the caption's tokens and $z_t$; the diffusion prior was as good and cheaper);
        2. the **decoder** $p(x \\mid z_i, y)$ is a GLIDE-style pixel diffusion model at 64 x 64 that is
           conditioned on $z_i$ (projected into extra tokens and added to the timestep embedding), followed by
           two diffusion upsamplers, 64 -> 256 -> 1024, trained with noise/blur conditioning augmentation.

        Why the detour through $z_i$? The decoder can *invert* CLIP image embeddings, so it produces
        **variations** of any image (encode it, decode with new noise), and it can interpolate between images
        or edit by moving the embedding along text directions. DALL-E 2 reported a zero-shot FID of 10.39 on
        MS-COCO, and human raters preferred its diversity over GLIDE's.

        | piece | input -> output | trained on |
        |---|---|---|
        | CLIP (frozen) | image or text -> one embedding vector (the paper's CLIP has a ViT-H/16 image encoder) | image-text pairs, contrastive |
        | prior | caption tokens + $z_t$ -> $z_i$ | pairs: predict the image's CLIP embedding |
        | decoder | $z_i$ (+ caption) -> 64 x 64 image | images and their own CLIP embeddings |
        | upsamplers | 64 -> 256 -> 1024 | images, with augmented low-res inputs |

        ## 4. Imagen: a big frozen language model, and dynamic thresholding

        Imagen (Saharia et al. 2022) is a pixel cascade like unCLIP, with three findings that stuck:

        - **Text encoder:** a frozen **T5-XXL** (4.6B parameters, trained on text only) beat CLIP's text encoder,
          and scaling the text encoder improved image-text alignment and fidelity *more* than scaling the image
          UNet. (SD 3 and FLUX later combined CLIP with T5-XXL.)
        - **Efficient U-Net:** more residual blocks at *low* resolutions where they are cheap, skip connections
          scaled by $1/\\sqrt 2$, and down/up-sampling placed to save memory; faster to train and to sample.
        - **Dynamic thresholding.** Large guidance weights $w$ push the prediction $\\hat x_0$ far outside the
          data range $[-1, 1]$. Clipping it to $[-1, 1]$ (*static* thresholding) gives flat, oversaturated
          colours. *Dynamic* thresholding picks $s$ = a high percentile (e.g. 99.5%) of $|\\hat x_0|$ for each
          sample; if $s > 1$ it clips to $[-s, s]$ and **divides by $s$**, pulling the whole image back into
          range while keeping its contrasts. Applied at every sampling step, it made large guidance weights usable.

        Imagen reported a zero-shot FID of 7.27 on MS-COCO. Below, a one-step illustration with
        `course_lib.guidance`: a "conditional" prediction $c$ (a shape) and an "unconditional" one $u$ (a grey
        blur), extrapolated as guidance does, $\\hat x_0 = u + w (c - u)$.
    """), code("""
        size = 32
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        background = torch.stack([0.7 * xx, 0.3 * yy - 0.2, -0.7 * yy])             # smooth colour gradients
        shape = shapes_batch(1, seed=2, image_size=size)["image"][0]
        inside = (shape > -0.99).any(0, keepdim=True).float()
        c = (background * (1 - inside) + shape * inside).unsqueeze(0)            # conditional x0_hat (1, 3, 32, 32)
        blur = F.avg_pool2d(F.pad(c, (3, 3, 3, 3), mode="replicate"), 7, stride=1)
        u = 0.5 * blur + 0.5 * blur.mean(1, keepdim=True)                      # unconditional: blurry and greyer
        weights = [1.0, 3.0, 7.5, 15.0]
        raw = torch.cat([u + w * (c - u) for w in weights])                    # (4, 3, 32, 32), outside [-1, 1]
        rows = {"static: clip to [-1, 1]": static_threshold(raw),
                "dynamic (p = 99.5%)": dynamic_threshold(raw, 0.995)}

        def saturated(image):   # share of values pinned at the ends of the range
            return (image.abs() >= 0.999).float().mean().item()

        for i, w in enumerate(weights):
            print(f"w = {w:>4}: x0_hat in [{raw[i].min():6.2f}, {raw[i].max():5.2f}], s = 99.5th percentile of "
                  f"|x0_hat| = {torch.quantile(raw[i].abs().flatten(), 0.995):5.2f};  values at +-1: "
                  f"static {saturated(rows['static: clip to [-1, 1]'][i]):4.0%}, "
                  f"dynamic {saturated(rows['dynamic (p = 99.5%)'][i]):4.0%}")
        fig, axes = plt.subplots(2, len(weights) + 1, figsize=(12, 5))
        for r, (name, images) in enumerate(rows.items()):
            for i, w in enumerate(weights):
                axes[r, i].imshow(image_grid(images[i:i + 1], padding=0))
                axes[r, i].set_title(f"{name}\\nw = {w}", fontsize=8)
                axes[r, i].set_axis_off()
            axes[r, -1].hist(raw[2].flatten().numpy(), bins=80, range=(-6, 6), color="0.7", label="raw x0_hat")
            axes[r, -1].hist(images[2].flatten().numpy(), bins=80, range=(-6, 6), alpha=0.7, label="thresholded")
            axes[r, -1].set_title("pixel values at w = 7.5", fontsize=8)
            axes[r, -1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(OUT / "dynamic_thresholding.png", dpi=90)
    """), md("""
        Static clipping sends every value beyond the range to the same extreme: most of the picture ends up
        pinned at $\pm 1$, and the smooth background turns into bands of pure, burnt-looking colour (the
        familiar look of too much guidance). Dynamic thresholding divides by $s$ instead, so
        the picture keeps its structure but comes back paler; inside a sampler that is fine, because every step
        moves only part of the way towards $\hat x_0$ and the next prediction restores the contrast, which is
        why Imagen could use large $w$ without the saturated look. SD needs neither: its latents are not
        bounded by 1 (lecture 7).

        ## 5. DiT: a transformer instead of the UNet

        Peebles & Xie (2023) replaced SD's convolutional UNet by a plain Vision Transformer working on the same
        kind of latents (SD's VAE, 32 x 32 x 4 for 256 x 256 images):

        1. **patchify**: cut the latent into $p \\times p$ patches and embed each as a token:
           $(C, H, W) \\to (HW/p^2,\\; p^2 C) \\to (N, D)$, plus positional embeddings. Smaller $p$ means more
           tokens and more compute for the same parameters: DiT-XL/**2** uses $p = 2$, 256 tokens;
        2. **blocks** of self-attention and MLP, conditioned on the timestep $t$ and the class $y$ through
           **adaptive layer norm**: an MLP maps $c = \\mathrm{emb}(t) + \\mathrm{emb}(y)$ to a shift $\\beta$,
           a scale $\\gamma$ and a gate $\\alpha$ for each of the two sub-layers:
           $$x \\leftarrow x + \\alpha_1 \\odot \\mathrm{Attn}\\big(\\mathrm{LN}(x)(1 + \\gamma_1) + \\beta_1\\big),\\qquad
             x \\leftarrow x + \\alpha_2 \\odot \\mathrm{MLP}\\big(\\mathrm{LN}(x)(1 + \\gamma_2) + \\beta_2\\big);$$
        3. **adaLN-Zero**: the MLP that produces $(\\beta, \\gamma, \\alpha)$ is initialised to output **zero**,
           so every gate $\\alpha = 0$ and every block starts as the identity map; the final layer is zero too.
           A deep network then starts as a trivial function and learns each residual branch from nothing,
           the same trick as zero-initialising the last layer of ResNet blocks or LoRA's $B$;
        4. a final adaLN + linear layer maps each token back to $p^2 C$ numbers (noise, and in the paper also
           the variance), and **unpatchify** rearranges them into a latent.

        DiT's result: image quality improved steadily with compute (Gflops), regardless of how it was spent;
        DiT-XL/2 (675M parameters, 119 Gflops) reached FID 2.27 on ImageNet 256 x 256 with guidance. SD 3, FLUX
        and Sora are descendants. Here is a tiny one, written out:
    """), code("""
        def patchify(z: torch.Tensor, p: int) -> torch.Tensor:
            \"\"\"(B, C, H, W) -> (B, N, p*p*C) with N = H*W / p^2, patches in row-major order.\"\"\"
            return rearrange(z, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)


        def unpatchify(x: torch.Tensor, p: int, channels: int, height: int) -> torch.Tensor:
            \"\"\"(B, N, p*p*C) -> (B, C, H, W), the inverse of patchify.\"\"\"
            return rearrange(x, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=height // p, p1=p, p2=p, c=channels)


        def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
            \"\"\"Sinusoidal features of the timesteps (B,) -> (B, dim), as in the DDPM and DiT code.\"\"\"
            freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
            angles = t.float()[:, None] * freqs[None]
            return torch.cat([angles.cos(), angles.sin()], dim=-1)


        def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return x * (1 + scale[:, None]) + shift[:, None]      # (B, N, D) with per-sample (B, D) shift/scale


        class DiTBlock(nn.Module):
            \"\"\"Self-attention and MLP, each modulated (shift, scale) and gated by the condition c: adaLN-Zero.\"\"\"

            def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
                super().__init__()
                self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)   # no own scale/shift:
                self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)   # c provides them
                self.attn = MultiHeadAttention(dim, heads, bias=True)
                self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"),
                                         nn.Linear(mlp_ratio * dim, dim))
                self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
                nn.init.zeros_(self.adaLN_modulation[1].weight)   # the "Zero": every shift, scale and gate is 0
                nn.init.zeros_(self.adaLN_modulation[1].bias)

            def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
                shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)  # 6 x (B, D)
                x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
                x = x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))
                return x


        class TinyDiT(nn.Module):
            \"\"\"Class-conditional noise predictor on (C, S, S) latents: patchify, DiT blocks, final layer, unpatchify.\"\"\"

            def __init__(self, channels=4, size=8, patch=2, dim=64, depth=3, heads=4, num_classes=3):
                super().__init__()
                self.channels, self.size, self.patch, self.dim = channels, size, patch, dim
                self.embed = nn.Linear(patch * patch * channels, dim)                    # one token per patch
                self.pos = nn.Parameter(0.02 * torch.randn(1, (size // patch) ** 2, dim))
                self.t_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
                self.y_embed = nn.Embedding(num_classes + 1, dim)                       # last id = "no class" (CFG)
                self.blocks = nn.ModuleList(DiTBlock(dim, heads) for _ in range(depth))
                self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
                self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
                self.out = nn.Linear(dim, patch * patch * channels)
                for layer in (self.final_modulation[1], self.out):                      # zero-init the way out
                    nn.init.zeros_(layer.weight)
                    nn.init.zeros_(layer.bias)

            def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                x = self.embed(patchify(z, self.patch)) + self.pos                       # (B, N, D)
                c = self.t_mlp(timestep_features(t, self.dim)) + self.y_embed(y)         # (B, D)
                for block in self.blocks:
                    x = block(x, c)
                shift, scale = self.final_modulation(c).chunk(2, dim=-1)
                x = self.out(modulate(self.norm(x), shift, scale))                       # (B, N, p*p*C)
                return unpatchify(x, self.patch, self.channels, self.size)               # (B, C, S, S)
    """), md("""
        **Toy latents.** To stay self-contained we do not use a VAE: a 16 x 16 grey picture of a shape,
        rearranged by `pixel_unshuffle` into 4 channels of 8 x 8, has exactly the shape of SD's latent of a
        64 x 64 image, $(4, 8, 8)$, and loses nothing. The class $y$ is the shape (circle, square, triangle).
    """), code("""
        data = shapes_batch(POOL, seed=0, image_size=16)
        latents = F.pixel_unshuffle(data["image"].mean(1, keepdim=True), 2)    # (N, 1, 16, 16) -> (N, 4, 8, 8)
        labels = data["shape"]
        torch.manual_seed(0)
        dit = TinyDiT()
        z, t, y = latents[:4], torch.tensor([10, 250, 500, 999]), labels[:4]
        tokens = patchify(z, 2)
        print(f"latents {tuple(z.shape)} -> patchify(p=2) -> {tuple(tokens.shape)} (N = 8*8/2^2 tokens of "
              f"2*2*4 numbers) -> embed -> {tuple(dit.embed(tokens).shape)}")
        assert torch.equal(unpatchify(tokens, 2, 4, 8), z)
        print(f"TinyDiT: {sum(p.numel() for p in dit.parameters()):,} parameters, {len(dit.blocks)} blocks")

        # identity at initialisation: every gate is 0, so each block returns its input, exactly
        x = dit.embed(tokens) + dit.pos
        c = dit.t_mlp(timestep_features(t, dit.dim)) + dit.y_embed(y)
        for i, block in enumerate(dit.blocks):
            out = block(x, c)
            print(f"block {i}: max |block(x, c) - x| = {(out - x).abs().max().item()}")
            assert torch.equal(out, x)
        prediction = dit(z, t, y)
        print(f"the whole model predicts {tuple(prediction.shape)}, max |eps_hat| = {prediction.abs().max().item()} at init")
    """), md("""
        The identity does not mean the model cannot learn; it means learning starts at the output and works
        its way in. Three plain gradient steps from the initialisation, with the gradient norm of each group
        of parameters before each step:

        - step 0: only the final linear layer gets a gradient (everything before it is multiplied by its zero
          weights);
        - step 1: the final layer is no longer zero, so gradients reach the modulation layers that produce the
          gates; the attention and MLP weights still get none, because the gates are still 0;
        - step 2: the gates are open a little, and the branches start to learn.
    """), code("""
        schedule = DDPMScheduler()
        g = torch.Generator().manual_seed(0)
        probe = TinyDiT()
        probe.load_state_dict(dit.state_dict())          # a copy of the model at initialisation
        sgd = torch.optim.SGD(probe.parameters(), lr=0.5)
        groups = {"final layer": "out.", "final modulation": "final_modulation", "gates (adaLN modulation)": "adaLN_modulation",
                  "attention": "attn.", "MLP": "mlp."}
        noise = torch.randn(z.shape, generator=g)
        print("step  " + "".join(f"{label:>26}" for label in groups))
        for step in range(3):
            loss = F.mse_loss(probe(schedule.add_noise(z, noise, t), t, y), noise)
            sgd.zero_grad()
            loss.backward()
            norms = [sum(p.grad.norm().item() ** 2 for n, p in probe.named_parameters() if key in n) ** 0.5
                     for key in groups.values()]
            print(f"{step:>4}  " + "".join(f"{v:>26.3g}" for v in norms))
            sgd.step()
    """), md("""
        A short training run of the noise-prediction objective (the class is dropped 10% of the time, for
        classifier-free guidance) shows the loss fall and the gates $|\\alpha|$ open:
    """), code("""
        optimizer = torch.optim.AdamW(dit.parameters(), lr=1e-3)
        null_class = 3
        losses, gates = [], []
        probe_t, probe_y = torch.full((64,), 500), labels[:64]
        for step in range(DIT_STEPS):
            idx = torch.randint(len(latents), (64,), generator=g)
            z0, yy = latents[idx], labels[idx].clone()
            yy[torch.rand(64, generator=g) < 0.1] = null_class
            noise = torch.randn(z0.shape, generator=g)
            t = torch.randint(0, 1000, (64,), generator=g)
            loss = F.mse_loss(dit(schedule.add_noise(z0, noise, t), t, yy), noise)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            with torch.no_grad():
                c = dit.t_mlp(timestep_features(probe_t, dit.dim)) + dit.y_embed(probe_y)
                gates.append([block.adaLN_modulation(c).chunk(6, -1)[2].abs().mean().item() for block in dit.blocks])

        fig, axes = plt.subplots(1, 2, figsize=(11, 3.3))
        plot_losses(losses, smooth=0.9, ax=axes[0], title="TinyDiT: noise-prediction loss")
        gates = np.array(gates)
        for i in range(gates.shape[1]):
            axes[1].plot(gates[:, i], label=f"block {i}")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("mean |gate_1| (attention branch)")
        axes[1].set_title("adaLN-Zero: the gates start at 0 and open")
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(OUT / "dit_training.png", dpi=90)
        print(f"loss: first 10 steps {np.mean(losses[:10]):.3f}, last 10 steps {np.mean(losses[-10:]):.3f}")
    """), md("""
        ## 6. How to evaluate: FID, CLIP score, and their traps

        - **FID** (Heusel et al. 2017) compares *distributions*: embed real and generated images with
          Inception-v3 (2048-d pool features), fit a Gaussian $\\mathcal{N}(\\mu, \\Sigma)$ to each set, and take
          the Frechet distance
          $$\\mathrm{FD} = \\lVert \\mu_r - \\mu_g \\rVert^2 + \\operatorname{Tr}\\big(\\Sigma_r + \\Sigma_g - 2 (\\Sigma_r \\Sigma_g)^{1/2}\\big).$$
          It rewards quality *and* diversity, but only as seen through Inception's features; papers use 10k
          to 50k images (MS-COCO zero-shot: 30k).
        - **CLIP score** measures *alignment* of each image with its own prompt: the cosine of their CLIP
          embeddings, averaged over images (Hessel et al. 2021 define $2.5 \\max(\\cos(E_I(x), E_T(y)), 0)$;
          text-to-image papers usually report $100 \\cos$). It depends on the
          CLIP model used (always say which), rewards "prompt words visible" rather than beauty, and can be
          gamed by optimising against the same CLIP.
        - **Human preference** studies (side by side, which image fits the prompt better / looks better) remain
          the reference; automatic metrics are checked against them.

        **FID is biased.** $\\mathrm{FD}$ computed from $N$ samples is on average *larger* than the true
        distance, and the excess shrinks roughly like $1/N$ (Chong & Forsyth 2020): with few samples the
        estimated covariances are noisy, and noise never makes two Gaussians look *closer*. The size of the
        bias depends on the generator, so two models compared at small $N$ can even swap places. CLIP score,
        a mean of per-image numbers, has no such bias: small $N$ only makes it noisier.

        The toy world lets us measure this. Its `ShapeEvaluator` (a small CNN trained on rendered shapes) plays
        Inception, and `course_lib.metrics.frechet_distance` computes FD on its 128-d features. We compare
        - two independent sets of **real** images (true distance 0), and
        - real images against a slightly **degraded** set (blurred, tinted: a plausible imperfect generator),
        at sample sizes from 16 to the pool size, many random subsets each.
    """), code("""
        if FAST:   # a quick evaluator is enough to show the effect
            evaluator, report = train_evaluator(num_train=600, steps=40, progress=False, num_test=200)
        else:      # the course's standard evaluator, trained once (about a minute) and cached in ./outputs
            evaluator = get_evaluator(cache_dir=OUT / "evaluator", progress=False)
            report = json.loads((OUT / "evaluator" / "shape_evaluator-v1-seed0" / "report.json").read_text())
        print(f"evaluator test accuracy: shape {report['shape_acc']:.3f}, colour {report['colour_acc']:.3f}")


        def degrade(images: torch.Tensor) -> torch.Tensor:
            \"\"\"A plausible imperfect generator: a little blur, a colour tint, some noise.\"\"\"
            blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
            tint = torch.tensor([0.06, -0.04, 0.0]).view(1, 3, 1, 1)
            noise = 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
            return (0.5 * images + 0.5 * blurred + tint + noise).clamp(-1, 1)


        real_a = shapes_batch(POOL, seed=10)
        real_b = shapes_batch(POOL, seed=11)
        fake = shapes_batch(POOL, seed=12)
        fake_images = degrade(fake["image"])
        evaluator.eval()
        with torch.no_grad():
            feats = {name: torch.cat([evaluator.features(chunk) for chunk in images.split(512)]).double()
                     for name, images in (("real_a", real_a["image"]), ("real_b", real_b["image"]), ("fake", fake_images))}
        print({name: tuple(f.shape) for name, f in feats.items()})
        fig = show_images(torch.cat([real_b["image"][:6], fake_images[:6]]), ncols=6, figsize=(9, 3.3),
                          titles=["real"] * 6 + ["degraded"] * 6)
    """), code("""
        def fd(features_1: torch.Tensor, features_2: torch.Tensor) -> float:
            return frechet_distance(features_1.mean(0), torch.cov(features_1.T), features_2.mean(0), torch.cov(features_2.T))


        # a CLIP-score stand-in: the cosine between an image's features and its prompt's "embedding", here the
        # mean features of real images with that (shape, colour); scaled by 100 like CLIP score
        label = lambda batch: batch["shape"] * 10 + batch["colour"]
        prototypes = {int(k): feats["real_a"][label(real_a) == k].mean(0) for k in label(real_a).unique()}
        prompt_vectors = torch.stack([prototypes[int(k)] for k in label(fake)])           # (POOL, d)
        toy_clip_score = 100 * F.cosine_similarity(feats["fake"], prompt_vectors, dim=1).clamp(min=0)

        sizes = [n for n in (16, 32, 64, 128, 256, 512, 1024, 2048) if n <= POOL]
        rng = torch.Generator().manual_seed(0)
        curves = {"real vs real (true distance 0)": [], "real vs degraded": []}
        clip_scores = []
        for n in sizes:
            rr, rf, cs = [], [], []
            for _ in range(REPEATS if n < POOL else 1):
                i, j, k = (torch.randperm(POOL, generator=rng)[:n] for _ in range(3))
                rr.append(fd(feats["real_a"][i], feats["real_b"][j]))
                rf.append(fd(feats["real_a"][i], feats["fake"][k]))
                cs.append(toy_clip_score[k].mean().item())
            curves["real vs real (true distance 0)"].append((np.mean(rr), np.std(rr)))
            curves["real vs degraded"].append((np.mean(rf), np.std(rf)))
            clip_scores.append((np.mean(cs), np.std(cs)))

        fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
        for name, values in curves.items():
            mean, std = np.array(values).T
            axes[0].errorbar(sizes, mean, yerr=std, marker="o", capsize=3, label=name)
            inverse = 1 / np.array(sizes)
            slope, intercept = np.polyfit(inverse[-4:], mean[-4:], 1)      # FD_N ~ FD_inf + k / N
            axes[1].plot(inverse, mean, "o", label=name)
            axes[1].plot([0, inverse[-4]], [intercept, intercept + slope * inverse[-4]], "--", color="0.4")
            print(f"{name:<32} FD at N={sizes[0]}: {mean[0]:8.2f}   at N={sizes[-1]}: {mean[-1]:7.2f}   "
                  f"extrapolated to N -> infinity: {intercept:6.2f}")
        axes[0].set_xscale("log", base=2)
        axes[0].set_xlabel("images per set N")
        axes[0].set_ylabel("Frechet distance (evaluator features)")
        axes[0].set_title("FD shrinks with N: it is biased upwards")
        axes[0].legend(fontsize=8)
        axes[1].set_xlabel("1 / N")
        axes[1].set_title("linear in 1/N: extrapolate to 1/N = 0")
        axes[1].set_xlim(left=0)
        mean, std = np.array(clip_scores).T
        axes[2].errorbar(sizes, mean, yerr=std, marker="o", capsize=3, color="C2")
        axes[2].axhline(mean[-1], color="0.5", ls="--")
        axes[2].set_xscale("log", base=2)
        axes[2].set_xlabel("images per set N")
        axes[2].set_ylabel("toy CLIP score of the degraded set")
        axes[2].set_title("a per-image mean: noisy, not biased")
        fig.tight_layout()
        fig.savefig(OUT / "fid_bias.png", dpi=90)
    """), md("""
        The right panel is the contrast: a toy CLIP score (the cosine between each image's features and the
        mean features of real images of its prompt) is a mean of per-image numbers, so small sets scatter
        around the full-set value (dashed) without drifting. Now read the left panel from the left: with 16 or 32 images per set, two sets of *real* images look further
        apart than the real and the degraded sets at the full pool size. An FD computed from a few dozen images
        says more about $N$ than about the model, and an "FID" measured on a small test set (or on a tiny
        fine-tuning dataset) cannot be compared with numbers computed at another $N$, let alone with published
        FIDs (different feature extractor, 50k images). Rules of thumb:

        - compare models at the **same** $N$, as large as you can afford, with the same reference set and the
          same feature extractor (and the same image resizing: FID is sensitive to it);
        - report the spread over several random subsets, or extrapolate to $N \\to \\infty$ ($\\mathrm{FID}_\\infty$);
        - pair a distribution metric (FID) with an alignment metric (CLIP score; in the toy world, prompt accuracy) and
          look at images with fixed seeds.
    """), quiz([
        ("Why does a super-resolution stage trained on clean low-resolution images do worse in a cascade than "
         "one trained with noise-conditioning augmentation, even though clean inputs carry more information?",
         "At sampling time its input comes from the base model, not from downsampling real images; it has "
         "artefacts the SR model never saw and trusts them. Augmentation teaches it to treat details below the "
         "noise level as unreliable, and the same noise at sampling time hides the base model's errors."),
        ("unCLIP's decoder is conditioned on a CLIP image embedding. Why is a prior needed to go from text, "
         "instead of feeding the decoder the CLIP text embedding directly?",
         "Text and image embeddings live in different regions of CLIP's space, and one caption fits many image "
         "embeddings; the decoder was trained on image embeddings. The prior samples a plausible image "
         "embedding for the caption (and lets you sample different ones)."),
        ("What does dynamic thresholding do to a prediction x0_hat whose 99.5th percentile of |x0_hat| is 0.9? "
         "And to one where it is 3?",
         "s = max(0.9, 1) = 1: clip to [-1, 1], which changes nothing inside the range (only the 0.5% of values "
         "beyond 1 are clipped). s = 3: clip to [-3, 3], then divide by 3: the whole image is scaled back "
         "into [-1, 1] with its contrasts intact."),
        ("A DiT block with adaLN-Zero is the identity at initialisation. Which of its parameters receive a "
         "non-zero gradient in the first step, and why is that enough?",
         "The adaLN modulation layer (which produces shift, scale and gates), because the output depends on the "
         "gates linearly through the branch outputs, which are non-zero. The attention and MLP weights get zero "
         "gradient while the gates are zero; after the first update the gates are non-zero and they learn too."),
        ("A latent of 32 x 32 x 4 is patchified with p = 2 and with p = 8. How many tokens, and what happens to "
         "the cost of self-attention?",
         "p = 2: 256 tokens of 16 numbers; p = 8: 16 tokens of 256 numbers. Attention costs grow with the "
         "square of the number of tokens, so p = 2 is 256x more attention work: DiT found that image quality "
         "follows such compute, which is why DiT-XL/2 beats DiT-XL/8."),
        ("A classmate fine-tunes SD on 50 images and reports FID 85 against those 50 images, versus 120 for the "
         "base model. What is wrong with the claim?",
         "With N = 50 (and a 2048-d Inception space) FID is dominated by its small-sample bias, whose size "
         "depends on the model; the difference may be bias, not quality. Also the reference is the training set "
         "(memorisation scores well). Use more samples, the same N for both, a held-out reference, several "
         "subsets, and an alignment metric and images with fixed seeds."),
    ])]
    return stem, cells


# ======================================================================================================
# Lecture 10: the LoRA workshop
# ======================================================================================================

def lecture_10():
    stem = "10_lora_workshop"
    cells = [md(f"""
        # Lecture 10 - Workshop: train your own LoRA for Stable Diffusion v1.5

        {badge(stem)}

        In this workshop you fine-tune SD v1.5 with LoRA on a captioned image set (a dataset from the Hugging
        Face Hub, or a folder of your own pictures), watch validation images appear during training, compare
        before and after with the same seeds, and load the result in plain diffusers. The run survives a Colab
        disconnect: checkpoints are copied to Google Drive, and re-running the notebook resumes where it
        stopped.

        **What you need (read before you start)**

        | | Colab GPU (the real workshop) | laptop CPU / offline / `FAST = True` |
        |---|---|---|
        | hardware | a **T4 with 16 GB** (Colab's free GPU) or better; *Runtime > Change runtime type > T4 GPU* | any CPU |
        | model | SD v1.5 (`stable-diffusion-v1-5/stable-diffusion-v1-5`), 4 GB download, fp16 on the GPU | the tiny random-weight twin (`build_tiny_sd`), same code path |
        | data | default: `lambdalabs/naruto-blip-captions` (1,221 captioned images, 700 MB), or your own folder | 32 shape pictures with a new caption, written on the spot |
        | resolution | 512 x 512 | 64 x 64 |
        | GPU memory | **published:** the diffusers LoRA script at 512 px, batch 1, fp16 "can run in as low as 11 GB of GPU RAM" (Cuenca & Paul, Hugging Face blog, Jan. 2023) | - |
        | time | **published:** 15,000 steps x 4 accumulated images (60,000 images) "took about 5 hours" on an RTX 2080 Ti (same blog), about 0.3 s per image. Our default, 1,000 steps of 1 image, is then about 5 minutes on that GPU; a T4 is slower, so **budget 10-20 minutes** (our extrapolation, not a measurement), plus 2-3 minutes of downloads and about 1 minute of validation images | about 2-3 minutes (about 1 minute with `FAST = True`) |

        These published figures were measured by their authors on their hardware, not here: the notebook
        prints the time and peak memory it actually measures on your runtime.

        **What you will learn**
        - preparing a captioned dataset (a Hub dataset, or your own pictures with `metadata.jsonl`);
        - the LoRA settings that matter (rank, learning rate, steps) and the precision the GPU allows
          (`pick_precision`: fp16 with a gradient scaler on a T4);
        - checkpointing to Google Drive and resuming after a disconnect, exactly;
        - judging a LoRA with fixed seeds, and sharing it as a 3 MB file that plain diffusers loads.

        **Prerequisites:** lecture 8 (LoRA), lecture 7 (the SD pipeline).

        **Time:** Colab T4 about 15-25 minutes in all (downloads, training, images; from the published
        figures above); laptop CPU with the tiny twin about 3 minutes (1 minute with `FAST = True`).
    """), SETUP, code("""
        FAST = False                    # CI sets FAST = True: the tiny model at 64 px, a few steps
        MODEL = "auto"                  # "auto": SD v1.5 on a GPU, the tiny twin otherwise; or "tiny", a hub id, a folder
        REVISION = None                 # None = the course's pinned commit of the model repo
        DATASET = "auto"                # "auto": HUB_DATASET with the real model, the shapes folder with the twin;
                                        # or a Hub dataset id, or a folder of images with metadata.jsonl
        HUB_DATASET = "lambdalabs/naruto-blip-captions"
        IMAGE_COLUMN, CAPTION_COLUMN = "image", "text"
        RUN_NAME = "my-first-lora"      # a new name starts a new run; the same name resumes it
        RESOLUTION = 512
        RANK = 4
        LEARNING_RATE = 1e-4
        MAX_TRAIN_STEPS = 1000
        TRAIN_BATCH_SIZE = 1
        GRADIENT_ACCUMULATION_STEPS = 1
        GRADIENT_CHECKPOINTING = False  # True: about 30% slower, much less activation memory (for small GPUs)
        CHECKPOINT_EVERY = 100          # a disconnect loses at most this many steps
        VALIDATION_EVERY = 250          # validation images every this many steps (None: never)
        VALIDATION_PROMPTS = None       # None: chosen to suit the dataset below
        SEEDS = (0, 1)                  # the same seeds before and after
        USE_DRIVE = True                # on Colab: copy checkpoints to Google Drive
        DRIVE_FOLDER = "/content/drive/MyDrive/sd-course/lora-workshop"
    """, tags=["parameters"]), code(LOCAL_ENV, """
        import matplotlib.pyplot as plt
        import torch

        from course_lib._io import load_safetensors
        from course_lib.data import load_image_dataset, shapes_batch, write_image_folder
        from course_lib.lora import lora_layers, remove_lora
        from course_lib.sd import (DEFAULT_MODEL_ID, DEFAULT_REVISION, LORA_WEIGHT_NAME, LoRATrainingConfig,
                                   ModelNotAvailableError, before_after_grid, build_tiny_sd, generate,
                                   load_sd_components, pick_precision, train_lora)
        from course_lib.viz import plot_losses, save_image_grid, show_images

        REVISION = REVISION or DEFAULT_REVISION
        DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
        if DEVICE == "cpu":
            torch.set_num_threads(1)  # the tiny model's layers are too small to gain from threads
        OUT = Path("outputs/10_lora_workshop")
        OUT.mkdir(parents=True, exist_ok=True)
        plt.rcParams["figure.dpi"] = 80          # inline figures: readable, and small enough to keep in git
    """), md("""
        ## 1. Check the runtime

        Which GPU did Colab give you, how much memory is free, and which precision will training use?
        `pick_precision` applies the rule from lecture 8's library: bf16 on GPUs of compute capability 8.0 or
        newer (A100, L4), fp16 with a gradient scaler on older ones (the T4 is 7.5), fp32 on a CPU. In every
        case the LoRA matrices themselves stay in fp32.
    """), code("""
        precision = pick_precision(DEVICE)
        if DEVICE == "cuda":
            free, total = torch.cuda.mem_get_info()
            major, minor = torch.cuda.get_device_capability()
            print(f"GPU:                {torch.cuda.get_device_name()} (compute capability {major}.{minor})")
            print(f"GPU memory:         {total / 2**30:.1f} GiB total, {free / 2**30:.1f} GiB free")
            if total < 14 * 2**30:
                print("  less than the T4's 16 GB: set GRADIENT_CHECKPOINTING = True (and keep TRAIN_BATCH_SIZE = 1)")
        else:
            print("GPU:                none. This run uses the tiny offline twin of SD v1.5 (same code, random weights).")
            print("                    On Colab: Runtime > Change runtime type > T4 GPU, then run all cells again.")
        print(f"mixed precision:    {precision.mixed_precision!r}: frozen weights in {precision.weight_dtype}, "
              f"LoRA weights in {precision.lora_dtype}, gradient scaler {'on' if precision.use_grad_scaler else 'off'}")
    """), md("""
        ## 2. Load the model

        On a GPU this loads SD v1.5 at the course's pinned revision, directly in the precision chosen above (fp16
        on a T4: half the download memory). Anywhere else, or if the download fails, it loads the tiny twin, and
        the settings shrink to match it: 64 x 64 pixels and a larger learning rate (a random model needs bigger
        steps to show any change in a few hundred updates).
    """), code(LOAD_MODEL, """
        if MODEL == "auto":
            MODEL = "tiny" if FAST or DEVICE == "cpu" else DEFAULT_MODEL_ID
        components, SOURCE, IS_TINY = load_model(MODEL, REVISION, precision.weight_dtype)
        VALIDATION_STEPS = 25                       # sampler steps for validation and before/after images
        if IS_TINY:
            RESOLUTION = components.vae_scale_factor * components.unet.config.sample_size    # 64
            LEARNING_RATE = 1e-3
            if FAST:
                MAX_TRAIN_STEPS, CHECKPOINT_EVERY, VALIDATION_EVERY, VALIDATION_STEPS = 30, 10, 15, 5
            print(f"TINY TWIN ({SOURCE}) at {RESOLUTION} x {RESOLUTION} px: the workshop's code path with random "
                  f"weights.\\nOn a Colab T4 the same cells train a LoRA for the real {DEFAULT_MODEL_ID}.")
        else:
            print(f"REAL MODEL: {SOURCE} (revision {REVISION}) in {components.unet.dtype} on {DEVICE}")
        print(f"training: {MAX_TRAIN_STEPS} steps at {RESOLUTION} px, rank {RANK}, learning rate {LEARNING_RATE:g}")
    """), md("""
        ## 3. The data

        Training needs pairs of an image and its caption. Three ways to provide them:

        1. **A Hub dataset** with an image column and a text column, e.g. `lambdalabs/naruto-blip-captions`
           (`image`, `text`; captions written by the BLIP captioning model). Set `DATASET` to its id.
        2. **Your own pictures**: put 10-50 images in a folder (on Colab, in your Drive, e.g.
           `/content/drive/MyDrive/my-lora-images`), set `DATASET` to that folder and run the cell. If the
           folder has no `metadata.jsonl`, the cell writes one that gives every image the caption
           `OWN_CAPTION` below. Choose a rare token for a new subject (`"a photo of sks dog"`), or describe a
           style (`"a painting in sks style"`); better still, edit the file and describe each image.
        3. **Offline / FAST**: 32 pictures of the shapes world (yellow squares, varied size and place) with a
           caption the model has never seen, `"a photo of a sks toy"`, written by
           `course_lib.data.write_image_folder`.

        A folder in this layout (`00000.png`, ..., plus `metadata.jsonl` with one `{"file_name": ..., "text": ...}`
        line per image) is what the `datasets` library calls an *imagefolder*.
    """), code("""
        OWN_CAPTION = "a photo of sks dog"
        CONCEPT = "a photo of a sks toy"             # the offline concept's caption


        def write_metadata(folder: Path, caption: str) -> None:
            \"\"\"Give every image in ``folder`` the same caption, in the imagefolder format.\"\"\"
            images = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
            if not images:
                raise ValueError(f"no .png/.jpg/.jpeg/.webp images in {folder}")
            lines = [json.dumps({"file_name": name, "text": caption}) for name in images]
            (folder / "metadata.jsonl").write_text("\\n".join(lines) + "\\n")
            print(f"wrote {folder / 'metadata.jsonl'}: {len(images)} images captioned {caption!r}")


        if DATASET == "auto":
            DATASET = "shapes" if IS_TINY else HUB_DATASET
        if DATASET == "shapes":
            concept = shapes_batch(32, seed=0, image_size=RESOLUTION, pairs=[("yellow", "square")])
            DATASET = str(write_image_folder(OUT / "data_sks_toy", concept["image"], [CONCEPT] * 32, overwrite=True))
            default_prompts = [CONCEPT, "a sks toy at the top left"]
            control_prompt = "a red circle"
        elif Path(DATASET).expanduser().is_dir():
            folder = Path(DATASET).expanduser()
            if not (folder / "metadata.jsonl").is_file():
                write_metadata(folder, OWN_CAPTION)
            default_prompts = [OWN_CAPTION, OWN_CAPTION + " on the beach"]
            control_prompt = "a photo of a lighthouse at sunset"
        else:  # a Hub dataset id: prompts in the spirit of the Naruto dataset card
            default_prompts = ["Bill Gates with a hoodie", "a cat wearing a red scarf"]
            control_prompt = "a photo of a lighthouse at sunset"
        VALIDATION_PROMPTS = list(VALIDATION_PROMPTS or default_prompts)

        dataset = load_image_dataset(DATASET, image_size=RESOLUTION, image_column=IMAGE_COLUMN,
                                     caption_column=CAPTION_COLUMN)
        print(f"{DATASET}: {len(dataset)} images; validation prompts {VALIDATION_PROMPTS}")
        preview = [dataset[i] for i in range(min(6, len(dataset)))]
        fig = show_images(torch.stack([item["image"] for item in preview]),
                          titles=[item["caption"][:60] for item in preview], ncols=6, figsize=(12, 2.6))
        fig.savefig(OUT / "dataset_preview.png", dpi=80)
    """), md("""
        ## 4. Where the checkpoints go: Google Drive

        A Colab runtime is disposable: when it disconnects, its disk (`/content`) is gone. `train_lora` writes a
        checkpoint every `CHECKPOINT_EVERY` steps to its output folder and, with `copy_checkpoints_to`, copies
        each one to a second folder: on Colab, your Google Drive. When you re-run the notebook after a
        disconnect, `resume="latest"` searches both folders and continues from the newest complete checkpoint,
        with the same data order and random numbers, as if nothing had happened.

        Offline, a local folder stands in for Drive, so the same mechanism runs (and is tested) everywhere.
    """), code("""
        if ON_COLAB and USE_DRIVE and not IS_TINY:
            from google.colab import drive
            drive.mount("/content/drive")           # asks for permission the first time
            drive_root = Path(DRIVE_FOLDER)
        else:
            drive_root = OUT / "drive_stand_in"
        OUTPUT_DIR = OUT / RUN_NAME
        COPY_TO = drive_root / RUN_NAME / "checkpoints"

        config = LoRATrainingConfig(
            dataset=DATASET, image_column=IMAGE_COLUMN, caption_column=CAPTION_COLUMN,
            output_dir=str(OUTPUT_DIR), pretrained_model_name_or_path=SOURCE, revision=REVISION,
            resolution=RESOLUTION, rank=RANK, learning_rate=LEARNING_RATE, max_train_steps=MAX_TRAIN_STEPS,
            train_batch_size=TRAIN_BATCH_SIZE, gradient_accumulation_steps=GRADIENT_ACCUMULATION_STEPS,
            gradient_checkpointing=GRADIENT_CHECKPOINTING, validation_prompts=tuple(VALIDATION_PROMPTS),
            validation_every=VALIDATION_EVERY, num_inference_steps=VALIDATION_STEPS,
            checkpoint_every=CHECKPOINT_EVERY, copy_checkpoints_to=str(COPY_TO), keep_last=2,
            resume="latest", seed=0, device=DEVICE)
        print(json.dumps(config.to_dict(), indent=1))
    """), md("""
        ## 5. Train

        `train_lora` freezes the three networks, wraps the UNet's attention projections with rank-`RANK`
        adapters, and minimises $\\lVert \\epsilon - \\epsilon_\\theta(z_t, t, c) \\rVert^2$ over the adapters only.
        If this cell finds a checkpoint of the same `RUN_NAME` (here or on Drive), it resumes; if the run is
        already complete, it only writes the LoRA file again. Run it again after a disconnect: that is all
        there is to resuming.
    """), code("""
        if lora_layers(components.unet):     # running this cell a second time: start from the clean UNet,
            remove_lora(components.unet)     # the checkpoint brings the trained adapters back
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        result = train_lora(config, components)
        elapsed = time.perf_counter() - t0

        if result.resumed_from is not None:
            print(f"resumed from the checkpoint at step {result.resumed_from} (found {result.checkpoint.parent})")
        done = len(result.losses) - (result.resumed_from or 0)
        print(f"{done} steps in this session, {elapsed / 60:.1f} min "
              f"({elapsed / max(done, 1):.2f} s per step including validation images), measured on this runtime")
        if DEVICE == "cuda":
            print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (measured on this runtime)")
        print(f"LoRA weights: {result.lora_path} ({result.lora_path.stat().st_size / 1e6:.2f} MB)")
        drive_copy = COPY_TO.parent / LORA_WEIGHT_NAME
        drive_copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(result.lora_path, drive_copy)     # the final file survives a disconnect too
        print(f"copied to {drive_copy}; checkpoints there: {sorted(p.name for p in COPY_TO.glob('checkpoint-*'))}")
    """), code("""
        fig = plot_losses(result.losses, smooth=0.95, title="training loss (one batch per step)")
        fig.savefig(OUT / "loss.png", dpi=80)
        if result.validation_images:
            steps = sorted(result.validation_images)
            grid = torch.cat([result.validation_images[s] for s in steps])
            path = save_image_grid(grid, OUT / "validation.png", nrow=len(VALIDATION_PROMPTS),
                                   row_labels=[f"step {s}" for s in steps], col_labels=VALIDATION_PROMPTS)
            fig = show_images(grid, titles=[f"step {s}: {p}"[:50] for s in steps for p in VALIDATION_PROMPTS],
                              ncols=len(VALIDATION_PROMPTS) * min(2, len(steps)), figsize=(10, 1.6 * len(steps) + 1))
        else:
            print("no validation images in this session (the run was already complete, or VALIDATION_EVERY is None)")
    """), md("""
        The loss is noisy because every step sees one image at one random timestep; what matters is the
        smoothed curve, and the images. Validation images use the same prompts and seeds every time, so a
        change between rows is the LoRA's doing.

        ## 6. Before and after, same seeds

        `before_after_grid` draws each (prompt, seed) twice: with the LoRA scale at 0 (the base model) and at 1.
        The last prompt does not mention the concept: it shows what else the LoRA changed (ideally little).
    """), code("""
        pipe = components.pipeline()
        pipe.set_progress_bar_config(disable=IS_TINY)
        prompts = VALIDATION_PROMPTS + [control_prompt]
        pairs = [(p, s) for p in prompts for s in SEEDS]
        grid = before_after_grid(pipe, [p for p, _ in pairs], [s for _, s in pairs], lora_scale=1.0,
                                 path=OUT / "before_after.png", num_inference_steps=VALIDATION_STEPS,
                                 guidance_scale=7.5, height=RESOLUTION, width=RESOLUTION)
        titles = [f"{kind}: {p[:30]} (seed {s})" for kind in ("before", "after") for p, s in pairs]
        fig = show_images(grid, titles=titles, ncols=len(pairs), figsize=(2.2 * len(pairs), 5.2))
        after = grid[len(pairs):]
        print(f"mean |after - before| per image: {[round(v, 3) for v in (after - grid[:len(pairs)]).abs().mean((1, 2, 3)).tolist()]}")
    """), md("""
        ## 7. Load it the way others will: plain diffusers

        The LoRA file uses diffusers' key names and records rank and alpha, so anyone can load it on top of the
        same base model with `pipe.load_lora_weights(folder)` and set its strength with
        `cross_attention_kwargs={"scale": s}`. With the same seed, the picture matches the one above.
    """), code("""
        fresh = to_device(load_sd_components(SOURCE, REVISION, torch_dtype=None if IS_TINY else precision.weight_dtype)).pipeline()
        fresh.set_progress_bar_config(disable=IS_TINY)
        from diffusers.utils import logging as diffusers_logging
        diffusers_logging.set_verbosity_error()   # silence "no LoRA keys for the text encoder": ours has none
        fresh.load_lora_weights(str(OUTPUT_DIR), weight_name=LORA_WEIGHT_NAME)
        diffusers_logging.set_verbosity_warning()
        again = generate(fresh, pairs[0][0], pairs[0][1], lora_scale=1.0, num_inference_steps=VALIDATION_STEPS,
                         guidance_scale=7.5, height=RESOLUTION, width=RESOLUTION)
        print(f"plain diffusers vs the training pipeline, {pairs[0]}: max |difference| = {(again[0] - after[0]).abs().max():.2e}")
        del fresh
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    """), md("""
        To share it: log in with `huggingface_hub.login()`, then `HfApi().create_repo("you/my-first-lora")` and
        `HfApi().upload_folder(folder_path=OUTPUT_DIR, repo_id="you/my-first-lora")`, and write the base model
        and the trigger words in the model card. It is about 3 MB at rank 4.

        ## 8. What a disconnect looks like (on the tiny twin, so it takes seconds)

        To see resuming work without waiting for a real disconnect, we simulate one on the tiny twin (whatever
        model the rest of the notebook used): a run is stopped half-way by an exception, its local folder is
        deleted (a dead runtime loses its disk), and the same call is made again. It finds the copy in the
        "Drive" folder and finishes. Its final LoRA is compared with a run that was never interrupted.
    """), code("""
        demo = OUT / "disconnect_demo"
        shutil.rmtree(demo, ignore_errors=True)
        demo_steps = 20
        demo_data = write_image_folder(demo / "data", shapes_batch(8, seed=0, image_size=64, pairs=[("yellow", "square")])["image"],
                                       [CONCEPT] * 8)

        def demo_config(name: str) -> LoRATrainingConfig:
            return LoRATrainingConfig(dataset=str(demo_data), output_dir=str(demo / name), resolution=64,
                                      pretrained_model_name_or_path=str(tiny_model_folder()), rank=4,
                                      learning_rate=1e-3, max_train_steps=demo_steps, checkpoint_every=5,
                                      copy_checkpoints_to=str(demo / "drive" / name), resume="latest", seed=0,
                                      device="cpu")


        class Disconnected(Exception):
            pass


        def pull_the_plug(step, loss):
            if step + 1 == 12:          # two steps after the checkpoint at step 10
                raise Disconnected(f"runtime disconnected after step {step + 1}")

        threads = torch.get_num_threads()
        torch.set_num_threads(1)                                     # tiny CPU work: one thread is fastest
        try:
            train_lora(demo_config("run"), callback=pull_the_plug)
        except Disconnected as err:
            print(err)
        print("on 'Drive':", sorted(p.name for p in (demo / "drive" / "run").iterdir()))
        shutil.rmtree(demo / "run")                                  # the runtime's disk is gone

        resumed = train_lora(demo_config("run"))                     # re-running the notebook does this
        straight = train_lora(demo_config("straight"))               # a run that was never interrupted
        torch.set_num_threads(threads)
        print(f"resumed from step {resumed.resumed_from}; losses recorded: {len(resumed.losses)}")
        a, b = load_safetensors(resumed.lora_path), load_safetensors(straight.lora_path)
        largest = max((a[k] - b[k]).abs().max().item() for k in a)
        print(f"interrupted + resumed vs uninterrupted: {len(a)} LoRA tensors, max |difference| = {largest}")

        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(straight.losses, "o-", ms=3, label="never interrupted")
        ax.plot(range(resumed.resumed_from, demo_steps), resumed.losses[resumed.resumed_from:], "x", ms=7,
                label=f"resumed at step {resumed.resumed_from}")
        ax.axvline(12, color="C3", ls=":", label="disconnect")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(OUT / "disconnect_demo.png", dpi=80)
    """), md("""
        Steps 11 and 12 were computed twice (once before the "disconnect", once after resuming from step 10),
        and gave the same numbers both times: each step's data and noise are a function of the seed and the
        step number, and the checkpoint stores the random generators. That is what makes resuming exact.

        ## 9. Where to go from here

        - **More steps or a higher rank** if the concept does not show yet (try 2,000 steps, or rank 8-16);
          fewer steps or a lower LoRA scale if everything starts to look like your dataset (overfitting).
        - **Min-SNR weighting** (`snr_gamma=5.0` in the config) often converges faster.
        - **8-bit Adam** (`use_8bit_adam=True`, needs `bitsandbytes`) and **gradient checkpointing** save memory
          on smaller GPUs.
        - Captions matter: a consistent trigger phrase and honest descriptions of everything *else* in each
          picture teach the model what belongs to the concept.
        - **More than one GPU** (a lab machine, not Colab): `accelerate launch --multi_gpu --num_processes N
          -m course_lib.sd.launch --config training_config.json --output_dir outputs/lora
          --copy_checkpoints_to none` reruns this workshop's settings (the options replace its Colab paths).
          Each GPU takes `train_batch_size` images, so an update sees N times as many; see the README section
          "Fine-tuning SD v1.5 on more than one GPU".
    """), quiz([
        ("Your Colab T4 run stops at step 640 with CHECKPOINT_EVERY = 100. After reconnecting and running all "
         "cells, from which step does training continue, and which files make that possible?",
         "From step 600: the newest complete checkpoint copied to Drive (checkpoint-00000600 with the LoRA "
         "weights, optimizer state, RNG states and loss history). The local copy is lost with the runtime; "
         "resume='latest' also searches copy_checkpoints_to."),
        ("Why does the workshop train in fp16 with a gradient scaler on a T4 but in bf16 on an A100?",
         "The T4 (compute capability 7.5) has no fast bf16; fp16's small range lets tiny gradients underflow, so "
         "the loss is scaled up before backward and the gradients scaled down before the step. bf16 has fp32's "
         "exponent range and needs no scaler; GPUs from capability 8.0 run it fast."),
        ("Why do before/after comparisons use fixed seeds, and why include a prompt that does not mention your "
         "concept?",
         "With the same seed the starting noise is identical, so any difference is due to the LoRA, not chance. "
         "The unrelated prompt shows whether the LoRA changed the model beyond the concept (over-fitting / "
         "language drift)."),
        ("The published figure says about 11 GB for LoRA training at 512 px. Name two settings in the config "
         "that reduce memory further, and what each costs.",
         "gradient_checkpointing=True (recomputes activations in the backward pass: ~30% slower); "
         "use_8bit_adam=True (8-bit optimizer states: needs bitsandbytes, slightly noisier updates); also a "
         "smaller resolution or batch size with gradient_accumulation_steps to keep the effective batch."),
        ("The loss curve barely moves, but the validation images change a lot. Is the LoRA learning?",
         "Probably yes: the noise-prediction loss is dominated by the random timestep (easy at small t, hard at "
         "large t), so per-step values are noisy and the average falls only a little. Judge by fixed-seed "
         "images and, if needed, a fixed-noise evaluation loss as in lecture 8."),
    ])]
    return stem, cells

# ======================================================================================================

BUILDERS = {"07": lecture_07, "08": lecture_08, "09": lecture_09, "10": lecture_10}


def build(numbers: list[str], folder: Path = LECTURES) -> list[Path]:
    """Write the notebooks ``numbers`` (e.g. ["07", "10"]) into ``folder``, without outputs."""
    written = []
    for number in numbers:
        stem, cells = BUILDERS[number]()
        notebook = nbformat.v4.new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
            "colab": {"provenance": []},
            "accelerator": "GPU",
        })
        nbformat.validate(notebook)
        path = Path(folder) / f"{stem}.ipynb"
        nbformat.write(notebook, path)
        written.append(path)
    return written


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def tidy(path: Path) -> int:
    """Make an executed notebook fit for committing: drop widget views (progress bars and sliders are live
    objects; without a kernel they render as text like "LoRA: 0%|") and papermill's run metadata.
    Returns the file size in bytes."""
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata.pop("widgets", None)
    notebook.metadata.pop("papermill", None)
    for cell in notebook.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if WIDGET_VIEW not in o.get("data", {})]
    nbformat.validate(notebook)
    nbformat.write(notebook, path)
    return path.stat().st_size


if __name__ == "__main__":
    if sys.argv[1:2] == ["--tidy"]:
        for name in sys.argv[2:]:
            print(f"tidied {name}: {tidy(Path(name)) / 1e3:.0f} kB")
    else:
        for path in build(sys.argv[1:] or sorted(BUILDERS)):
            print(f"wrote {path}")
