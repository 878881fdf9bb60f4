"""Build lecture notebooks 01-03 (pixels to latents, attention, DDPM) from the cell sources below.

    .venv/bin/python tools/lectures_01_03.py            # writes lectures/01_*.ipynb, 02_*.ipynb, 03_*.ipynb
    .venv/bin/python tools/lectures_01_03.py 02         # only the notebooks whose name starts with 02

The notebooks are written without outputs; execute them (FAST=False is the default) to add the figures:
    .venv/bin/jupyter nbconvert --to notebook --execute --inplace lectures/01_pixels_to_latents.ipynb
"""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
REPO = "https://github.com/sd-course/latent-diffusion-course"

SETUP = '''\
# Colab: install the course library; Colab's own torch stays (the course asks for torch>=2.1).
import sys, subprocess
if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "course_lib @ git+https://github.com/sd-course/latent-diffusion-course"], check=True)'''


def badge(name: str) -> str:
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/main/lectures/{name})")


def md(text: str):
    return new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text: str, tags: list[str] | None = None):
    cell = new_code_cell(textwrap.dedent(text).strip("\n"))
    if tags:
        cell.metadata["tags"] = tags
    return cell


def notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


# ==========================================================================================================
# Lecture 1: from pixels to latents
# ==========================================================================================================

def lecture_01():
    name = "01_pixels_to_latents.ipynb"
    return notebook([
        md(rf"""
        # Lecture 1 — From pixels to latents: the autoencoder behind Stable Diffusion

        Stable Diffusion is a *latent* diffusion model: it never denoises pixels. A variational autoencoder
        (VAE) first compresses every image into a small latent image, the diffusion model learns and samples
        in that space, and the VAE's decoder turns its samples back into pixels. This lecture builds and trains
        that VAE, in miniature, on the course's toy world of coloured shapes.

        **What you will learn**
        - why diffusion in pixel space is expensive, in numbers (512 x 512 x 3 vs 64 x 64 x 4: 48x);
        - autoencoder vs VAE, the evidence lower bound (ELBO), the reparameterisation trick, the KL term in
          closed form;
        - the $\beta$ trade-off between sharp reconstructions and a well-behaved latent space (we train three);
        - that Stable Diffusion's posterior is **convolutional**: a latent *image* with a mean and a variance
          per position, not one vector from an MLP;
        - latent interpolation, latent channels as images, and the latent **scale factor** (SD's 0.18215).

        **Prerequisites:** PyTorch basics (modules, optimisers, autograd), the normal distribution, $\log$
        and $\exp$. No diffusion knowledge yet.

        **Time:** about 5 minutes on a laptop CPU (most of it training three small VAEs), about 1 minute on a
        Colab GPU. `FAST = True` runs everything in well under a minute with barely trained models.

        {badge(name)}
        """),
        code(SETUP),
        code('''
        FAST = False            # True in CI: tiny data and a few training steps
        SEED = 0
        IMAGE_SIZE = 32         # shapes-world images, 3 x 32 x 32
        NUM_IMAGES = 4096       # training images (rendered on the fly, no download)
        BATCH_SIZE = 64
        LEARNING_RATE = 2e-3
        BETAS = (1e-5, 1e-3, 1e-1)   # KL weights for the beta sweep; the middle one is the VAE we keep
        SWEEP_STEPS = 200       # training steps per beta in the sweep
        MAIN_STEPS = 800        # total steps for the VAE we keep (the sweep's middle beta, trained on)
        SCALE_IMAGES = 1024     # images encoded to measure the latent scale factor
        ''', tags=["parameters"]),
        code('''
        if FAST:  # same lesson, barely trained models
            NUM_IMAGES, BATCH_SIZE, SWEEP_STEPS, MAIN_STEPS, SCALE_IMAGES = 128, 8, 4, 8, 64
        KEEP_BETA = BETAS[len(BETAS) // 2]
        '''),
        code('''
        %matplotlib inline
        import json
        import math
        from pathlib import Path

        import ipywidgets as widgets
        import matplotlib.pyplot as plt
        import torch
        import torch.nn.functional as F
        from matplotlib.colors import BoundaryNorm

        from course_lib.data import shapes_batch, render_shape
        from course_lib.train import train_loop, cosine_schedule_with_warmup
        from course_lib.vae import VAE, VAEConfig, DiagonalGaussian, estimate_scale_factor, kl_divergence, vae_loss
        from course_lib.viz import image_grid, plot_losses, show_images

        torch.manual_seed(SEED)
        if FAST:
            torch.set_num_threads(1)  # CI shares a busy machine: threads waiting on each other cost more than they save
        OUTPUTS = Path("outputs")   # next to this notebook (git-ignored)
        '''),
        md(r"""
        ## 1. Why not diffuse the pixels?

        A diffusion model runs its network once per denoising step: tens of times per generated image, and
        millions of times during training. Its cost grows with the number of numbers it processes, and the
        self-attention inside grows with the *square* of the number of positions. Count for a 512 x 512 RGB
        image and for Stable Diffusion's latent of it (downsampling factor $f = 8$, $c = 4$ channels):
        """),
        code('''
        pixels = 512 * 512 * 3          # H x W x RGB
        latents = 64 * 64 * 4           # (H/8) x (W/8) x 4 channels
        print(f"pixel space : {pixels:>9,} numbers")
        print(f"latent space: {latents:>9,} numbers   -> {pixels / latents:.0f}x fewer")
        print(f"self-attention over positions: {(512 * 512) ** 2 / (64 * 64) ** 2:,.0f}x fewer weights in latent space")
        '''),
        md(r"""
        48 times fewer numbers, 4096 times smaller attention matrices. The bet of latent diffusion (Rombach et
        al. 2022) is that little is lost: most of the bits of an image are imperceptible high-frequency detail.
        An autoencoder learns once to strip that detail off and put it back (*perceptual compression*), and the
        expensive diffusion model spends its capacity on what the image shows (*semantic compression*).

        Our toy version: 3 x 32 x 32 images of one coloured shape, compressed to 4 x 8 x 8 latents ($f = 4$).
        """),
        code('''
        data = shapes_batch(NUM_IMAGES, seed=SEED, image_size=IMAGE_SIZE)
        images = data["image"]                                  # (N, 3, 32, 32) in [-1, 1]
        test = shapes_batch(16, seed=SEED + 1, image_size=IMAGE_SIZE)   # held-out images (another seed)
        test_images = test["image"]
        print("training images:", tuple(images.shape), f"{images.min():.0f}..{images.max():.0f}")
        print(f"toy compression: {3 * 32 * 32:,} -> {4 * 8 * 8} numbers = {3 * 32 * 32 / (4 * 8 * 8):.0f}x")
        fig = show_images(test_images[:8], titles=test["caption"][:8])
        '''),
        md(r"""
        ## 2. Autoencoder vs variational autoencoder

        A plain **autoencoder** has an encoder $z = E(x)$ and a decoder $\hat x = D(z)$, trained to make
        $\hat x \approx x$. It compresses well, but nothing shapes its latent space: codes of different images
        may sit far apart with holes in between, their scale is arbitrary, and a $z$ that no image was
        encoded to can decode to garbage. The diffusion model will *generate* latents and hand them to $D$,
        so we need a latent space that is smooth, filled and of a known scale.

        A **VAE** (Kingma & Welling 2014) makes the encoder output a *distribution*
        $q_\phi(z \mid x) = \mathcal N\big(\mu_\phi(x), \operatorname{diag} \sigma^2_\phi(x)\big)$, decodes a
        sample of it with $p_\theta(x \mid z)$, and pulls every $q_\phi(z \mid x)$ towards the prior
        $p(z) = \mathcal N(0, I)$. Both terms come out of one bound on the log-likelihood, the **ELBO**:

        $$\log p_\theta(x) \;\ge\; \underbrace{\mathbb E_{z \sim q_\phi(z|x)}\big[\log p_\theta(x \mid z)\big]}_{\text{reconstruction}}
        \;-\; \underbrace{\mathrm{KL}\big(q_\phi(z \mid x)\,\|\,p(z)\big)}_{\text{regulariser}}.$$

        (Why: $\log p(x) = \text{ELBO} + \mathrm{KL}\big(q(z|x) \,\|\, p(z|x)\big)$ and a KL is never negative.)
        With a Gaussian decoder $p_\theta(x \mid z) = \mathcal N(\hat x, \sigma_x^2 I)$ the first term is
        $-\lVert x - \hat x \rVert^2 / (2\sigma_x^2)$ plus a constant, so the loss we minimise is

        $$\mathcal L = \lVert x - \hat x \rVert^2 + \beta\, \mathrm{KL}\big(q_\phi(z \mid x)\,\|\,\mathcal N(0, I)\big),$$

        where $\beta$ absorbs $\sigma_x$: it says how much we trust the pixels versus the prior. That is
        `course_lib.vae.vae_loss` (sum over the pixels of one image, mean over the batch).

        ## 3. The reparameterisation trick

        The reconstruction term needs a sample $z \sim q_\phi(z \mid x)$, and we need gradients with respect
        to $\mu$ and $\sigma$ *through* that sample. Sampling is not differentiable, but rewriting it is:

        $$z = \mu + \sigma \odot \varepsilon, \qquad \varepsilon \sim \mathcal N(0, I).$$

        The randomness now sits in $\varepsilon$, which does not depend on the parameters; $z$ is a plain
        differentiable function of $\mu$ and $\sigma$. `DiagonalGaussian.sample` does exactly this.
        """),
        code('''
        mean = torch.tensor([0.5, -1.0], requires_grad=True)
        logvar = torch.tensor([0.0, -2.0], requires_grad=True)      # log sigma^2
        g = torch.Generator().manual_seed(SEED)

        z = DiagonalGaussian(mean, logvar).sample(generator=g)     # mean + exp(logvar / 2) * eps
        print("reparameterised z:", z, "<- has a grad_fn")
        print("torch.distributions .sample(): ", torch.distributions.Normal(mean, (0.5 * logvar).exp()).sample(),
              "<- no grad_fn: gradients stop here (rsample() is torch's reparameterised version)")

        # Monte Carlo check: d/d mean E[z^2] = 2 mean and d/d logvar E[z^2] = sigma^2 (since E[z^2] = mean^2 + sigma^2)
        many = DiagonalGaussian(mean.expand(100_000, 2), logvar.expand(100_000, 2)).sample(generator=g)
        many.pow(2).mean(dim=0).sum().backward()
        print("gradient wrt mean  :", mean.grad, " exact:", 2 * mean.detach())
        print("gradient wrt logvar:", logvar.grad, " exact:", logvar.detach().exp())
        '''),
        md(r"""
        ## 4. The KL term in closed form

        For one latent number with $q = \mathcal N(\mu, \sigma^2)$ and $p = \mathcal N(0, 1)$,

        $$\mathrm{KL}(q \,\|\, p) = \tfrac12\left(\mu^2 + \sigma^2 - 1 - \log \sigma^2\right),$$

        and a diagonal Gaussian sums this over its latent numbers. It is zero exactly at $\mu = 0, \sigma = 1$:
        it pulls the means to the origin and the variances to 1, i.e. it *fills* the latent space with noise
        of a known scale and stops the encoder from hiding information in tiny variances. Check it against a
        Monte Carlo estimate $\mathbb E_q[\log q(z) - \log p(z)]$ and against `torch.distributions`:
        """),
        code('''
        mu, lv = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.0, -2.0, 1.0]])
        q = torch.distributions.Normal(mu, (0.5 * lv).exp())
        p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
        samples = q.sample((200_000,))
        monte_carlo = (q.log_prob(samples) - p.log_prob(samples)).sum(-1).mean()
        print(f"closed form (course_lib) : {kl_divergence(mu, lv).item():.4f}")
        print(f"torch.distributions      : {torch.distributions.kl_divergence(q, p).sum().item():.4f}")
        print(f"Monte Carlo (200k draws) : {monte_carlo.item():.4f}")

        m, s = torch.meshgrid(torch.linspace(-3, 3, 121), torch.linspace(-3, 2, 101), indexing="xy")
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        kl_map = kl_divergence(m.flatten(), 2 * s.flatten()).reshape(m.shape)   # 1-D input: one KL per number
        levels = [0, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32]
        cs = ax.contourf(m, s, kl_map, levels=levels, cmap="viridis", extend="max",
                         norm=BoundaryNorm(levels, ncolors=256, extend="max"))   # one colour per band
        ax.plot(0, 0, "w*", ms=12)
        ax.set(xlabel=r"$\\mu$", ylabel=r"$\\log\\sigma$", title="KL to N(0, 1) of one latent number")
        fig.colorbar(cs, ax=ax)
        plt.show()
        '''),
        md(r"""
        ## 5. Stable Diffusion's VAE is convolutional

        A common picture of a VAE, from MNIST tutorials: flatten the image, an MLP produces one vector $\mu$
        (say 32 numbers) and one $\log\sigma^2$. **That is not what Stable Diffusion uses.** Its encoder is a
        fully convolutional network whose last layer outputs $2c = 8$ channels on a $64 \times 64$ grid: a mean
        and a log-variance for *every channel at every position*. The latent is an *image*: position $(i, j)$
        describes the $8 \times 8$ pixel patch around it, the same network encodes any image size, and the
        diffusion UNet can be a convolutional network over it. An MLP would not even fit: one dense layer from
        786,432 pixels to 16,384 latents alone would hold 12.9 billion weights.

        `course_lib.vae.VAE` follows SD's `AutoencoderKL` layout in miniature:
        """),
        code('''
        config = VAEConfig.shapes()
        print(config)
        print(f"downsampling factor f = {config.downsample_factor}; parameters: {VAE(config).num_parameters():,}")

        vae = VAE(config)
        posterior = vae.encode(test_images[:2])                 # q(z|x): a DiagonalGaussian
        print("posterior mean  :", tuple(posterior.mean.shape), " <- (B, c, H/f, W/f): a latent image")
        print("posterior logvar:", tuple(posterior.logvar.shape))
        print("decoded         :", tuple(vae.decode(posterior.sample()).shape))
        print(f"an MLP from 3x512x512 to 4x64x64: {pixels * latents / 1e9:.1f} billion weights in one layer")
        '''),
        md(r"""
        ## 6. The $\beta$ trade-off

        We train the same architecture with three KL weights $\beta$ and the same data, seed and number of
        steps, using the course's training loop `course_lib.train.train_loop` (progress bar, gradient
        clipping). `step_fn` is the whole training step: draw a batch, encode, sample, decode, loss.
        """),
        code('''
        def make_step_fn(vae, beta, log):
            """One VAE training step: the loss on a random batch; records the two terms in ``log``."""
            def step_fn(step, generator):
                x = images[torch.randint(0, len(images), (BATCH_SIZE,), generator=generator)]
                out = vae(x, generator=generator)                  # encode, z ~ q(z|x), decode
                loss = vae_loss(out.sample, x, out.posterior, beta=beta)
                log["reconstruction"].append(loss.reconstruction.item())
                log["KL"].append(loss.kl.item())
                return loss.loss
            return step_fn

        runs = {}
        for beta in BETAS:
            torch.manual_seed(SEED)                                # same initial weights for every beta
            model = VAE(VAEConfig.shapes())
            optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
            log = {"reconstruction": [], "KL": []}
            train_loop(make_step_fn(model, beta, log), SWEEP_STEPS, modules={"vae": model}, optimizer=optimizer,
                       generator=torch.Generator().manual_seed(SEED), max_grad_norm=1.0, desc=f"beta={beta:g}")
            runs[beta] = {"vae": model, "optimizer": optimizer, "log": log}
        '''),
        md(r"""
        Now compare them on held-out images: the reconstruction error and KL per image, the spread of the
        latents, the reconstructions, and what each decoder makes of random latents drawn from the prior
        $\mathcal N(0, I)$ that the KL term pulls the posteriors towards.
        """),
        code('''
        @torch.no_grad()
        def evaluate(vae, generator):
            vae.eval()
            out = vae(test_images, sample_posterior=False)                   # decode the posterior means
            loss = vae_loss(out.sample, test_images, out.posterior)
            s = estimate_scale_factor(vae, images[:SCALE_IMAGES], generator=generator)
            prior = torch.randn(8, *out.posterior.mean.shape[1:], generator=generator)   # z ~ N(0, I)
            vae.train()
            return {"reconstruction": loss.reconstruction.item(), "KL": loss.kl.item(), "latent std": 1 / s,
                    "recon": out.sample[:8], "prior": vae.decode(prior)}

        results = {beta: evaluate(run["vae"], torch.Generator().manual_seed(SEED)) for beta, run in runs.items()}
        print(f"{'beta':>8} {'SSE / image':>12} {'KL / image':>11} {'latent std':>11}")
        for beta, r in results.items():
            print(f"{beta:>8g} {r['reconstruction']:>12.1f} {r['KL']:>11.1f} {r['latent std']:>11.2f}")

        rows = [test_images[:8]] + [results[b]["recon"] for b in BETAS] + [results[b]["prior"] for b in BETAS]
        labels = (["original"] + [f"reconstruction, beta={b:g}" for b in BETAS]
                  + [f"decode z ~ N(0, I), beta={b:g}" for b in BETAS])
        grid = image_grid(torch.cat(rows).clamp(-1, 1), nrow=8)             # (rows * 34 + 2, 8 * 34 + 2, 3)
        fig, ax = plt.subplots(figsize=(9, 1.05 * len(rows)))
        ax.imshow(grid)
        ax.set_yticks([2 + 34 * i + 16 for i in range(len(rows))], labels, fontsize=9)
        ax.set_xticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        plt.show()
        '''),
        md(r"""
        Read the figure top to bottom:

        - **small $\beta$** behaves almost like a plain autoencoder: the sharpest reconstructions, the largest
          KL, latents spread wider than $\mathcal N(0, I)$. Random prior samples decode to a busy texture of
          shape fragments.
        - **large $\beta$** pays for a small KL with blurry reconstructions and wrong colours: the KL budget is
          too small to store the colour precisely. Its prior samples are sparse blobs on black, closer to the
          look of the data, because the encoder had to use the prior's region of latent space.
        - **the middle $\beta$** is the compromise latent diffusion wants: reconstructions good enough to be the
          final image, a latent space that the KL keeps near $\mathcal N(0, I)$.

        Note what *no* row shows: a random $z \sim \mathcal N(0, I)$ decoded into one clean shape. The prior
        treats the 256 latent numbers as independent, while the latents of real images are strongly
        correlated (one shape, one colour, one place). Learning that joint distribution is the diffusion
        model's job, not the VAE's. The KL only has to keep the latent space smooth and of a known scale, which
        is why Stable Diffusion uses a tiny $\beta \approx 10^{-6}$ (plus perceptual and adversarial losses
        for sharpness).

        ## 7. Train the VAE we keep

        We keep the middle $\beta$ and train it on, with a cosine learning-rate decay, to `MAIN_STEPS` in total.
        """),
        code('''
        run = runs[KEEP_BETA]
        vae, optimizer, log = run["vae"], run["optimizer"], run["log"]
        extra_steps = MAIN_STEPS - SWEEP_STEPS
        lr_scheduler = cosine_schedule_with_warmup(optimizer, warmup_steps=0, total_steps=extra_steps)
        train_loop(make_step_fn(vae, KEEP_BETA, log), extra_steps, modules={"vae": vae}, optimizer=optimizer,
                   lr_scheduler=lr_scheduler, generator=torch.Generator().manual_seed(SEED + 1), max_grad_norm=1.0,
                   desc=f"VAE beta={KEEP_BETA:g}")
        vae.eval()

        fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
        plot_losses(log["reconstruction"], ax=axes[0], title="reconstruction (SSE per image)")
        plot_losses(log["KL"], ax=axes[1], title="KL per image")
        for ax in axes:
            ax.legend(handles=[ax.axvline(SWEEP_STEPS, color="grey", ls=":", label="end of the sweep")])
        plt.show()

        with torch.no_grad():
            reconstructions = vae(test_images, sample_posterior=False).sample
        fig = show_images(torch.cat([test_images[:8], reconstructions[:8].clamp(-1, 1)]), ncols=8,
                          titles=["original"] * 8 + ["reconstruction"] * 8)
        '''),
        md(r"""
        ## 8. Looking inside the latent

        The latent of one image is a $4 \times 8 \times 8$ tensor: four 8 x 8 "images". Plot each channel of
        the posterior mean next to the picture it encodes (blue negative, red positive):
        """),
        code('''
        with torch.no_grad():
            means = vae.encode(test_images[:4]).mean            # (4, c, 8, 8)
        limit = means.abs().max().item()
        fig, axes = plt.subplots(4, 1 + means.shape[1], figsize=(8, 7.5))
        for i in range(4):
            axes[i, 0].imshow(((test_images[i].permute(1, 2, 0) + 1) / 2).numpy())
            for c in range(means.shape[1]):
                axes[i, 1 + c].imshow(means[i, c], cmap="RdBu_r", vmin=-limit, vmax=limit)
                axes[0, 1 + c].set_title(f"channel {c}")
        axes[0, 0].set_title("image")
        for ax in axes.flat:
            ax.set_xticks([]); ax.set_yticks([])
        fig.tight_layout()
        plt.show()
        '''),
        md(r"""
        The shape is visible in the channels at the right place: the latent is a small, strangely coloured
        image, not a code book. That is why SD's latents can be inpainted, cropped and upscaled, and why the
        UNet that denoises them is convolutional.

        Locality, tested: add a small green square in the top-left corner of an image and see which latent
        positions change.
        """),
        code('''
        base = test_images[3]
        patch = render_shape("square", "green", 5, (4, 4), IMAGE_SIZE)           # a small square, top left
        edited = torch.maximum(base, patch)
        with torch.no_grad():
            change = (vae.encode(edited[None]).mean - vae.encode(base[None]).mean).abs().sum(dim=1)[0]  # (8, 8)
        fig, axes = plt.subplots(1, 3, figsize=(8, 2.8))
        for ax, img, title in ((axes[0], base, "image"), (axes[1], edited, "edited (top left)")):
            ax.imshow(((img.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()); ax.set_title(title)
        im = axes[2].imshow(change, cmap="magma"); axes[2].set_title("|change| of the latent mean")
        fig.colorbar(im, ax=axes[2], fraction=0.046)
        for ax in axes:
            ax.set_xticks([]); ax.set_yticks([])
        fig.tight_layout()
        plt.show()
        '''),
        md(r"""
        The change is concentrated in the top-left latent positions. (It is not *exactly* zero elsewhere: the
        encoder's middle block has one self-attention layer, as in SD, which lets every position see every
        other.)

        ### Latent interpolation

        Walk in a straight line from the latent of one image to the latent of another and decode every point.
        Compare with fading the pixels:
        """),
        code('''
        with torch.no_grad():
            z_a, z_b = vae.encode(test_images[[0, 5]]).mean         # (c, 8, 8) each

        def interpolate(alpha):
            with torch.no_grad():
                decoded = vae.decode(((1 - alpha) * z_a + alpha * z_b)[None])[0]
            return decoded.clamp(-1, 1), (1 - alpha) * test_images[0] + alpha * test_images[5]

        alphas = torch.linspace(0, 1, 8)
        latent_row, pixel_row = zip(*(interpolate(a.item()) for a in alphas))
        fig = show_images(torch.stack(list(latent_row) + list(pixel_row)), ncols=8,
                          titles=[f"latent, a={a:.2f}" for a in alphas] + [f"pixels, a={a:.2f}" for a in alphas])
        '''),
        md(r"""
        Pixel fading superimposes two faint pictures. Latent interpolation gives one object that moves, morphs
        and changes colour. The in-between images are not all clean shapes, and the colour may take a detour
        (through blue or red, say): the latent space is smooth, but nothing forces a straight line in it to
        stay on the data, nor orders colours the way RGB does. (For *noise* latents, as in SD's
        sampling, one uses spherical interpolation instead, because Gaussian vectors live near a sphere.)
        Drag the slider in a live notebook:
        """),
        code('''
        def show_interpolation(alpha=0.5):
            latent, pixel = interpolate(alpha)
            fig = show_images(torch.stack([test_images[0], latent, pixel, test_images[5]]), ncols=4,
                              titles=["start", f"latent mix a={alpha:.2f}", f"pixel mix a={alpha:.2f}", "end"])
            plt.show()

        show_interpolation(0.5)   # the static figure; the slider below redraws it in a live notebook
        widgets.interact(show_interpolation, alpha=widgets.FloatSlider(value=0.5, min=0, max=1, step=0.05));
        '''),
        md(r"""
        ## 9. The latent scale factor

        The diffusion model of lecture 3 mixes its input with unit-variance noise,
        $x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \varepsilon$, and its noise schedule is
        designed for data of roughly unit variance. Latents have whatever spread the KL term allowed, so latent
        diffusion multiplies them by one number $s = 1 / \operatorname{std}(z)$, measured once on a sample of
        encoded training images (Rombach et al. 2022, appendix). For SD's VAE $\operatorname{std}(z) \approx
        5.49$, hence the famous constant $s = 0.18215$: diffusers' pipelines encode with
        `latents = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor` and decode with
        `vae.decode(latents / vae.config.scaling_factor)`.
        """),
        code('''
        def latent_values(vae):
            """Samples z ~ q(z|x) for the first SCALE_IMAGES training images, flattened."""
            with torch.no_grad():
                return torch.cat([vae.encode(b).sample(generator=torch.Generator().manual_seed(i))
                                  for i, b in enumerate(images[:SCALE_IMAGES].split(256))]).flatten()

        scale_factor = estimate_scale_factor(vae, images[:SCALE_IMAGES], generator=torch.Generator().manual_seed(SEED))
        z = latent_values(vae)
        print(f"kept VAE (beta={KEEP_BETA:g}): std(z) = {z.std():.3f}  ->  scale factor s = {scale_factor:.4f}"
              f"   (Stable Diffusion: 0.18215)")

        grid = torch.linspace(-5, 5, 200)
        fig, axes = plt.subplots(1, 2, figsize=(11, 3), sharey=True)
        for ax, beta in zip(axes, (KEEP_BETA, BETAS[0])):
            values = latent_values(runs[beta]["vae"])
            s = 1 / values.std()
            ax.hist(values.numpy(), bins=100, density=True, alpha=0.5, range=(-5, 5), label="z")
            ax.hist((s * values).numpy(), bins=100, density=True, alpha=0.5, range=(-5, 5), label=f"s * z, s = {s:.2f}")
            ax.plot(grid, torch.exp(-grid ** 2 / 2) / math.sqrt(2 * math.pi), "k--", label="N(0, 1)")
            ax.set(title=f"beta = {beta:g}: std(z) = {values.std():.2f}", xlabel="latent value")
            ax.legend(fontsize=8)
        fig.tight_layout()
        plt.show()

        abar = 0.5   # a middle timestep: designed signal-to-noise ratio abar / (1 - abar) = 1
        print(f"at abar_t = {abar}: SNR with scaled latents {abar * (scale_factor * z).var() / (1 - abar):.2f}, "
              f"with raw latents {abar * z.var() / (1 - abar):.2f}")
        '''),
        md(r"""
        The stronger the KL, the closer $\operatorname{std}(z)$ is to 1: our kept VAE ($\beta = 10^{-3}$, a *large*
        $\beta$ by SD's standards) needs little rescaling, the sweep's $\beta = 10^{-5}$ VAE noticeably more, and
        SD's VAE ($\beta \approx 10^{-6}$) a factor 5.5. The scale factor does not make the latents Gaussian (the
        tall peak is the black background, which covers most of every image), only unit-scale:
        without it the signal-to-noise ratio at every timestep would be off by the factor $\operatorname{var}(z)$,
        and the schedule would spend its steps in the wrong place. Note that $s$ belongs to the VAE: a
        diffusion model trained on one VAE's scaled latents needs the same VAE and the same $s$.

        We save the VAE and its scale factor next to this notebook (`outputs/`, not tracked by git) so you can
        play with them later; the next lectures train their own models.
        """),
        code('''
        folder = vae.save_pretrained(OUTPUTS / "lecture01_vae")
        (Path(folder) / "scale_factor.json").write_text(json.dumps({"scale_factor": scale_factor, "beta": KEEP_BETA}))
        print("saved", sorted(p.name for p in Path(folder).iterdir()))
        '''),
        md(r"""
        ## Summary

        - Latent diffusion runs the expensive model on a compressed image: 48x fewer numbers for SD at 512 px.
        - A VAE's encoder outputs $q(z \mid x) = \mathcal N(\mu, \sigma^2)$; training maximises the ELBO:
          reconstruction minus $\beta \cdot \mathrm{KL}(q \,\|\, \mathcal N(0, I))$, with
          $\mathrm{KL} = \frac12 \sum (\mu^2 + \sigma^2 - 1 - \log\sigma^2)$.
        - The reparameterisation $z = \mu + \sigma \varepsilon$ lets gradients flow through the sampling.
        - $\beta$ trades sharp reconstructions against a tame latent space; latent diffusion needs little KL.
        - SD's posterior is convolutional: a mean and variance for every channel at every position of a latent
          *image*.
        - Diffusion runs on $s \cdot z$ with $s = 1/\operatorname{std}(z)$ (SD: 0.18215); divide by $s$ before
          decoding.

        ## Check your understanding

        1. SD-XL generates 1024 x 1024 images with the same $f = 8$, $c = 4$ VAE. How many latent numbers is
           that, how many times fewer than the pixels, and by what factor does a self-attention matrix over all
           latent positions grow compared with SD 1.5 at 512 px?
        2. During training we decode a *sample* $z \sim q(z \mid x)$, yet for reconstructions we used the
           mean. Why sample during training at all? What would happen to $\sigma$ if we always decoded the
           mean and set $\beta = 0$?
        3. Your VAE's latents have standard deviation 0.5 and you forget the scale factor. At the timestep where
           $\bar\alpha_t = 0.5$, what is the real signal-to-noise ratio, and which timesteps of the schedule
           become nearly useless?
        4. A friend's VAE encoder ends with `nn.Flatten()` and `nn.Linear(..., 2 * 256)`. Name two things it
           cannot do that SD's convolutional posterior can.

        <details><summary>Answers (try first)</summary>

        1. $128 \times 128 \times 4 = 65{,}536$ numbers, again 48x fewer than $1024^2 \times 3$. Positions go
           from 4096 to 16,384: the attention matrix grows 16x (which is why SD-XL drops attention at its
           highest-resolution level).
        2. Sampling with a $\sigma$ that the KL keeps away from 0 forces nearby latents to decode to similar
           images: that is what makes the latent space smooth and filled. With the mean only and $\beta = 0$ it
           is a plain autoencoder; $\sigma$ gets no gradient from the reconstruction, and if sampled, it would
           shrink towards 0 ($\log\sigma^2 \to -30$, the clamp).
        3. SNR $= \bar\alpha_t\, \mathrm{var}(z) / (1 - \bar\alpha_t) = 0.25$ instead of 1. The signal
           disappears into the noise earlier: the late, high-noise timesteps carry almost no information, and
           the model spends part of its schedule on nearly pure noise.
        4. It cannot encode images of another size without retraining (the Linear fixes the input size), and
           its latent has no spatial layout: no inpainting or cropping in latent space, no convolutional UNet
           over it. (Also: the Linear layer's size explodes with resolution.)
        </details>
        """),
    ])

# ==========================================================================================================
# Lecture 2: attention
# ==========================================================================================================

def lecture_02():
    name = "02_attention.ipynb"
    return notebook([
        md(rf"""
        # Lecture 2 — Attention: how pixels look at pixels, and at words

        Every transformer block in Stable Diffusion's UNet runs two attentions: **self-attention**, where the
        positions of the latent image exchange information with each other, and **cross-attention**, where they
        read the prompt. This lecture takes attention apart and puts it back together.

        **What you will learn**
        - single-head scaled dot-product attention, written out in five lines, and checked live against
          `torch.nn.functional.scaled_dot_product_attention`;
        - why the scores are divided by $\sqrt d$: what the softmax does without it (saturation) and why that
          stops learning;
        - multi-head attention, and the efficient implementation: project once with one matrix, then *reshape*
          into heads;
        - self- vs cross-attention, and where each sits in Stable Diffusion;
        - masks (causal, padding) and what happens when a query may look at nothing;
        - how to read attention maps as heat maps over an image.

        **Prerequisites:** PyTorch tensors, matrix products and broadcasting, `softmax`. Lecture 1 is not needed.

        **Time:** about 1 minute on a laptop CPU (nothing is trained); under a minute on a Colab GPU.

        {badge(name)}
        """),
        code(SETUP),
        code('''
        FAST = False          # True in CI: smaller sizes, fewer timing repeats
        SEED = 0
        DIM = 128             # model width of the multi-head demos
        NUM_HEADS = 8         # heads of DIM // NUM_HEADS channels each
        NUM_TOKENS = 1024     # sequence length for the timing comparison (a 32 x 32 latent)
        TIMING_REPEATS = 10   # timing runs per implementation (we report the median)
        IMAGE_SIZE = 32       # shapes-world images for the heat maps
        ''', tags=["parameters"]),
        code('''
        if FAST:  # same lesson, less waiting
            NUM_TOKENS, TIMING_REPEATS = 256, 3
        '''),
        code('''
        %matplotlib inline
        import math
        import time

        import ipywidgets as widgets
        import matplotlib.pyplot as plt
        import torch
        import torch.nn.functional as F
        from einops import rearrange
        from torch import nn

        from course_lib.attention import MultiHeadAttention, scaled_dot_product_attention
        from course_lib.data import render_shape
        from course_lib.viz import plot_attention_maps

        torch.manual_seed(SEED)
        if FAST:
            torch.set_num_threads(1)  # CI shares a busy machine: threads waiting on each other cost more than they save
        print("torch", torch.__version__)
        '''),
        md(r"""
        ## 1. Attention in one sentence

        Every token (a position of a feature map, a word of a prompt) sends out a **query** $q$ ("what am I
        looking for?"), shows a **key** $k$ ("what do I contain?") and carries a **value** $v$ ("what I hand
        over"). A token's output is the average of all values, weighted by how well its query matches each key:

        $$\mathrm{Attention}(Q, K, V) = \underbrace{\mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt d}\right)}_{A}\, V,
        \qquad Q \in \mathbb{R}^{L_q \times d},\; K \in \mathbb{R}^{L_k \times d},\; V \in \mathbb{R}^{L_k \times d_v}.$$

        $A$ is an $L_q \times L_k$ matrix; row $i$ is a probability distribution over the keys (it sums to 1):
        *where query $i$ looks*. $Q$, $K$, $V$ are linear projections of the tokens: $Q = X W_q$, $K = X W_k$,
        $V = X W_v$.

        ## 2. One head, written out
        """),
        code('''
        B, L, D_MODEL, d = 2, 6, 16, 8              # batch, tokens, model width, head width
        x = torch.randn(B, L, D_MODEL)              # the tokens
        W_q, W_k, W_v = (torch.randn(D_MODEL, d) / math.sqrt(D_MODEL) for _ in range(3))

        Q, K, V = x @ W_q, x @ W_k, x @ W_v                 # (B, L, d) each
        scores = Q @ K.transpose(-2, -1) / math.sqrt(d)     # (B, L, L): query i . key j, scaled
        A = scores.softmax(dim=-1)                          # each row: a distribution over the keys
        out = A @ V                                         # (B, L, d): weighted average of the values

        print("scores", tuple(scores.shape), "-> out", tuple(out.shape))
        print("every row of A sums to 1:", torch.allclose(A.sum(dim=-1), torch.ones(B, L)))
        '''),
        md(r"""
        The same five steps live in `course_lib.attention.scaled_dot_product_attention` (with masks added).
        PyTorch ships a fused kernel for them, `F.scaled_dot_product_attention`, which never stores $A$ in
        memory on a GPU (FlashAttention). The numbers must agree up to float rounding:
        """),
        code('''
        ours = scaled_dot_product_attention(Q, K, V)           # course_lib: the steps above
        fused = F.scaled_dot_product_attention(Q, K, V)        # PyTorch's fused kernel
        print(f"max |hand-written - torch fused| = {(out - fused).abs().max().item():.2e}")
        print(f"max |course_lib   - torch fused| = {(ours - fused).abs().max().item():.2e}")

        fig, ax = plt.subplots(figsize=(3.6, 3))
        im = ax.imshow(A[0].detach(), cmap="viridis", vmin=0)
        ax.set_xlabel("key j"); ax.set_ylabel("query i"); ax.set_title("attention weights A (one example)")
        fig.colorbar(im, ax=ax, fraction=0.046)
        plt.show()
        '''),
        md(r"""
        ## 3. Why divide by $\sqrt d$?

        Take $q$ and $k$ with independent entries of mean 0 and variance 1. Their dot product
        $q \cdot k = \sum_{i=1}^{d} q_i k_i$ is a sum of $d$ terms of variance 1, so it has variance $d$: the
        scores spread out like $\sqrt d$. For a head of width $d = 64$ the scores are typically $\pm 8$, and
        $e^{8} / e^{-8} \approx 9 \times 10^{6}$: the softmax puts nearly all its weight on one key.

        A saturated softmax is bad for learning, not just for mixing. Its Jacobian is
        $\partial a / \partial s = \mathrm{diag}(a) - a a^\top$, which is **zero** when $a$ is one-hot: no
        gradient reaches the queries and keys, so they stop learning. Dividing by $\sqrt d$ brings the score
        variance back to 1 for every head width. Below: one query against 64 random keys, for growing $d$.
        """),
        code('''
        def softmax_stats(d, scaled, num_keys=64, trials=256, generator=None):
            """For a typical query (the median over trials): its largest weight and ||diag(a) - a a^T||_F."""
            q = torch.randn(trials, 1, d, generator=generator)
            k = torch.randn(trials, num_keys, d, generator=generator)
            s = (q @ k.transpose(-2, -1)).squeeze(1)               # (trials, num_keys), variance d
            if scaled:
                s = s / math.sqrt(d)                               # variance 1
            a = s.softmax(dim=-1)
            jacobian = torch.diag_embed(a) - a[:, :, None] * a[:, None, :]   # (trials, keys, keys)
            return a.max(dim=-1).values.median().item(), jacobian.flatten(1).norm(dim=1).median().item()

        g = torch.Generator().manual_seed(SEED)
        dims = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
        stats = {scaled: [softmax_stats(d, scaled, generator=g) for d in dims] for scaled in (False, True)}

        fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
        q, k = torch.randn(1, 256, generator=g), torch.randn(64, 256, generator=g)
        for scaled, colour in ((False, "C3"), (True, "C0")):
            s = (q @ k.T).squeeze(0) / (math.sqrt(256) if scaled else 1)
            axes[0].bar(torch.arange(64) + (0.4 if scaled else 0), s.softmax(-1), width=0.4, color=colour,
                        label="softmax(QK$^T$/$\\\\sqrt{d}$)" if scaled else "softmax(QK$^T$)")
        axes[0].set(title="one query, 64 keys, d = 256", xlabel="key", ylabel="weight")
        axes[0].legend()
        for scaled, colour, label in ((False, "C3", "without 1/sqrt(d)"), (True, "C0", "with 1/sqrt(d)")):
            largest, jac = zip(*stats[scaled])
            axes[1].plot(dims, largest, "o-", color=colour, label=label)
            axes[2].plot(dims, jac, "o-", color=colour, label=label)
        axes[1].axhline(1 / 64, color="grey", ls=":", label="uniform (1/64)")
        axes[1].set(xscale="log", title="largest weight, typical query (1 = one-hot)", xlabel="head width d")
        axes[2].set(xscale="log", yscale="log", title="softmax Jacobian norm, typical query",
                    xlabel="head width d")
        for ax in axes[1:]:
            ax.grid(alpha=0.3); ax.legend()
        fig.tight_layout()
        plt.show()
        for d, (big, jac), (big_s, jac_s) in zip(dims, stats[False], stats[True]):
            if d in (8, 64, 512):
                print(f"d={d:4d}: largest weight {big:.2f} unscaled vs {big_s:.2f} scaled; "
                      f"Jacobian norm {jac:.1e} vs {jac_s:.1e}")
        '''),
        md(r"""
        Without the scale (red), the typical query's largest weight climbs towards 1 as $d$ grows, and the
        Jacobian, the gradient signal for $W_q$ and $W_k$, collapses by orders of magnitude (log scale). With it (blue) both stay put
        whatever the width. Stable Diffusion 1.x uses heads of width 40 to 160: without the scale it would sit
        far to the right of these plots.

        ## 4. Many heads

        One head gives each query **one** distribution over the keys. But a position may want to look at
        pixels of the same colour *and*, separately, at its neighbours, *and* at the word that describes it.
        Multi-head attention runs $h$ heads of width $d = D/h$ side by side, each with its own
        $W_q^{(i)}, W_k^{(i)}, W_v^{(i)}$, concatenates their outputs and mixes them with $W_o$:

        $$\mathrm{MultiHead}(X, C) = \mathrm{Concat}(\mathrm{head}_1, \dots, \mathrm{head}_h)\, W_o, \qquad
        \mathrm{head}_i = \mathrm{Attention}(X W_q^{(i)}, C W_k^{(i)}, C W_v^{(i)}).$$

        $C$ is the *context*: $C = X$ for self-attention. Same parameter count and cost as one head of width
        $D$. First the literal version, one head at a time:
        """),
        code('''
        def multi_head_loop(x, context, W_q, W_k, W_v, W_o, num_heads):
            """One head at a time. W_q: (D, D); head i owns columns i*d .. (i+1)*d - 1 of W_q, W_k, W_v."""
            d = W_q.shape[1] // num_heads
            heads = []
            for i in range(num_heads):
                cols = slice(i * d, (i + 1) * d)
                q, k, v = x @ W_q[:, cols], context @ W_k[:, cols], context @ W_v[:, cols]  # (B, N, d), (B, M, d)
                a = (q @ k.transpose(-2, -1) / math.sqrt(d)).softmax(dim=-1)               # (B, N, M)
                heads.append(a @ v)                                                         # (B, N, d)
            return torch.cat(heads, dim=-1) @ W_o                                           # (B, N, D)
        '''),
        md(r"""
        The loop is slow: $3h$ small matrix products, $h$ small attentions. The efficient form notices that the
        $h$ projections of head $i$ are just column blocks of one big matrix. So: **one** product
        $X\,[W_q \,|\, W_k \,|\, W_v]$ with a $(D, 3D)$ matrix, then a *reshape* (free, no arithmetic) that
        splits the channels into (q/k/v, head, channel) and moves the heads next to the batch dimension, one
        batched attention for all heads, and a reshape back, which *is* the concatenation.
        """),
        code('''
        def multi_head_fused(x, W_qkv, W_o, num_heads):
            """Self-attention with ONE projection W_qkv = [W_q | W_k | W_v] of shape (D, 3D), then reshapes."""
            qkv = x @ W_qkv                                                        # (B, N, 3D): one matmul
            q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=num_heads)  # (B, h, N, d)
            out = F.scaled_dot_product_attention(q, k, v)                         # all heads in one call
            return rearrange(out, "b h n d -> b n (h d)") @ W_o                    # concat heads = reshape
        '''),
        md(r"""
        PyTorch's own `nn.MultiheadAttention` stores exactly this `(3D, D)` matrix (`in_proj_weight`). We take
        its weights, run all three implementations, plus `course_lib.attention.MultiHeadAttention` (diffusers'
        layout: separate `to_q`, `to_k`, `to_v`, `to_out`) with the same weights copied in:
        """),
        code('''
        torch_mha = nn.MultiheadAttention(DIM, NUM_HEADS, bias=False, batch_first=True)
        W_qkv = torch_mha.in_proj_weight.detach().T        # (D, 3D) = [W_q | W_k | W_v]
        W_o = torch_mha.out_proj.weight.detach().T         # (D, D)
        W_q, W_k, W_v = W_qkv.split(DIM, dim=1)

        ours = MultiHeadAttention(DIM, NUM_HEADS)          # to_q/to_k/to_v: x @ W.T, as nn.Linear
        with torch.no_grad():
            ours.to_q.weight.copy_(W_q.T); ours.to_k.weight.copy_(W_k.T); ours.to_v.weight.copy_(W_v.T)
            ours.to_out[0].weight.copy_(W_o.T); ours.to_out[0].bias.zero_()

        x = torch.randn(2, 50, DIM)
        with torch.no_grad():
            reference, _ = torch_mha(x, x, x, need_weights=False)
            results = {"loop over heads": multi_head_loop(x, x, W_q, W_k, W_v, W_o, NUM_HEADS),
                       "one matrix + reshape": multi_head_fused(x, W_qkv, W_o, NUM_HEADS),
                       "course_lib MultiHeadAttention": ours(x)}
        for label, result in results.items():
            print(f"{label:30s} max |diff| to nn.MultiheadAttention = {(result - reference).abs().max().item():.2e}")
        '''),
        md(r"""
        Same numbers. Now the speed, on a sequence of `NUM_TOKENS` tokens (1024 = a 32 x 32 latent; SD at
        512 px has 4096 at its top level). The middle bar does the reshape trick but computes the softmax by
        hand, materialising the $(B, h, N, N)$ weights; the last one hands it to the fused kernel.
        """),
        code('''
        def multi_head_fused_explicit(x, W_qkv, W_o, num_heads):
            qkv = x @ W_qkv
            q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=num_heads)
            out = scaled_dot_product_attention(q, k, v)           # explicit softmax, (B, h, N, N) in memory
            return rearrange(out, "b h n d -> b n (h d)") @ W_o

        def median_seconds(fn, repeats=TIMING_REPEATS):
            fn()                                                  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
            return sorted(times)[len(times) // 2]

        x_long = torch.randn(1, NUM_TOKENS, DIM)
        with torch.no_grad():
            timings = {
                "loop over heads": median_seconds(lambda: multi_head_loop(x_long, x_long, W_q, W_k, W_v, W_o, NUM_HEADS)),
                "one matrix,\\nexplicit softmax": median_seconds(lambda: multi_head_fused_explicit(x_long, W_qkv, W_o, NUM_HEADS)),
                "one matrix,\\nfused SDPA": median_seconds(lambda: multi_head_fused(x_long, W_qkv, W_o, NUM_HEADS)),
            }
        fig, ax = plt.subplots(figsize=(6, 2.8))
        ax.barh(list(timings), [1000 * s for s in timings.values()], color=["C3", "C1", "C0"])
        ax.set(xlabel="milliseconds (median)", title=f"self-attention, {NUM_TOKENS} tokens, D={DIM}, {NUM_HEADS} heads")
        ax.invert_yaxis()
        fig.tight_layout()
        plt.show()
        '''),
        md(r"""
        The fused kernel wins. The middle bar may surprise you: depending on the CPU it can be *slower* than the
        loop. Computing all heads' weights at once stores $h \times N \times N$ numbers (8 x 1024 x 1024 floats
        = 32 MB here), which no cache holds, while the loop's one-head matrix (4 MB) may fit. The fused kernel
        never stores the matrix: it walks over the keys in tiles and keeps a running softmax (the FlashAttention
        idea), so the memory traffic disappears. On a GPU the gap is far larger, and the saved memory is what
        makes 4096-token attention affordable at all. (Timings on a shared machine are noisy: rerun the cell.)

        ## 5. Self-attention vs cross-attention

        The only difference is where keys and values come from:

        | | queries from | keys and values from | $A$ has shape | in Stable Diffusion |
        |---|---|---|---|---|
        | self-attention | image tokens $X$ | image tokens $X$ | $(N, N)$ | positions of the latent talk to each other |
        | cross-attention | image tokens $X$ | text tokens $C$ | $(N, M)$ | each position reads the prompt |

        An image feature map `(B, C, H, W)` becomes `N = H*W` tokens by a reshape. The text tokens come from
        the text encoder (CLIP in SD: `M = 77` tokens of width 768). The output always has one row per *image*
        token: words never receive anything, they only hand over their values.
        """),
        code('''
        feature_map = torch.randn(2, 64, 16, 16)                           # (B, C, H, W) inside the UNet
        image_tokens = rearrange(feature_map, "b c h w -> b (h w) c")      # (B, N=256, C=64)
        text_tokens = torch.randn(2, 7, 32)                                # (B, M=7, 32) from a text encoder

        self_attn = MultiHeadAttention(dim=64, num_heads=4)
        cross_attn = MultiHeadAttention(dim=64, num_heads=4, context_dim=32)  # to_k, to_v: 32 -> 64
        with torch.no_grad():
            out_self, A_self = self_attn(image_tokens, return_attention=True)
            out_cross, A_cross = cross_attn(image_tokens, context=text_tokens, return_attention=True)
        print("self-attention : out", tuple(out_self.shape), " weights (B, heads, N, N) =", tuple(A_self.shape))
        print("cross-attention: out", tuple(out_cross.shape), " weights (B, heads, N, M) =", tuple(A_cross.shape))

        for label, side in (("SD 1.5, 512 px image -> 64x64 latent", 64), ("pixel space, 512 x 512", 512)):
            n = side * side
            print(f"{label:38s}: self-attention matrix {n:>7,} x {n:>7,} = {n * n:.1e} weights per head; "
                  f"cross-attention {n:,} x 77 = {n * 77:.1e}")
        '''),
        md(r"""
        At full pixel resolution one self-attention matrix would hold $7 \times 10^{10}$ numbers per head: one
        more reason (after lecture 1's) why Stable Diffusion works on latents, and even there puts attention
        only where the latent is at most 64 x 64.

        ## 6. Masks

        A mask says which keys each query may look at. We use `torch`'s convention: a **bool** mask with
        `True` = may attend (internally the score is set to $-\infty$ where `False`, so its weight is exactly 0),
        or a **float** mask that is added to the scores.

        - **Causal mask**: token $i$ sees tokens $\le i$. CLIP's text encoder uses it, so a word's embedding
          depends only on the words before it.
        - **Padding mask**: prompts are padded to a fixed length (77 in SD); a key mask hides the padding
          tokens. (SD 1.x, for the record, lets the UNet attend to CLIP's padding tokens: they carry summary
          information after the causal text encoder.)
        """),
        code('''
        L = 8
        q, k, v = torch.randn(3, 1, L, 16).unbind(0)                      # (1, L, 16) each
        causal = torch.ones(L, L, dtype=torch.bool).tril()                 # (L, L): True on and below the diagonal
        padding = torch.arange(L) < 5                                      # last 3 tokens are padding
        padding_mask = padding[None, :].expand(L, L)                       # (L, L): hide padded keys for every query
        masks = {"no mask": None, "causal": causal, "padding (3 pad tokens)": padding_mask,
                 "causal + padding": causal & padding_mask}

        fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
        for ax, (label, mask) in zip(axes, masks.items()):
            out, weights = scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
            reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            ax.imshow(weights[0], cmap="viridis", vmin=0, vmax=1)
            ax.set(title=f"{label}\\nmax |diff| to torch {(out - reference).abs().max():.0e}", xlabel="key j", ylabel="query i")
        fig.tight_layout()
        plt.show()
        is_causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        print(f"causal mask vs torch's is_causal=True: max |diff| = "
              f"{(scaled_dot_product_attention(q, k, v, mask=causal) - is_causal).abs().max():.1e}")
        '''),
        md(r"""
        What if a query may look at **nothing** (a row of the mask is all `False`)? The softmax of a row of
        $-\infty$ is $0/0$: undefined. Check what each implementation returns, then guard against it in your
        own code (e.g. make sure every row keeps at least one key, as `course_lib.unet` does for prompts).
        """),
        code('''
        empty_row = causal.clone()
        empty_row[2] = False                                           # query 2 may attend to nothing
        ours_out = scaled_dot_product_attention(q, k, v, mask=empty_row)
        torch_out = F.scaled_dot_product_attention(q, k, v, attn_mask=empty_row)
        print("course_lib, row 2:", ours_out[0, 2, :4])
        print("torch,      row 2:", torch_out[0, 2, :4])
        print("other rows unaffected:", torch.allclose(ours_out[0, 3:], torch_out[0, 3:], atol=1e-6))
        '''),
        md(r"""
        `course_lib`'s explicit softmax computes $0/0$ and returns NaN. This version of PyTorch's fused kernel
        returns zeros for such a row instead (older versions gave NaN too). Neither is a meaningful answer: the
        NaN at least tells you something is wrong, the zeros hide it.
        """),
        md(r"""
        ## 7. Attention maps as heat maps

        In a trained Stable Diffusion, the cross-attention weights of the word "cat" over the $64 \times 64$
        positions form a heat map that outlines the cat: that is how prompt-to-prompt editing and attention
        visualisations work. We will record real ones from our own UNet in a later lecture. Here we build a
        cross-attention layer **by hand**, with weights we choose, so you can predict every map before you see it.

        - image tokens: each pixel becomes a 5-number feature $(r, g, b, x, y)$ with colours and coordinates in
          $[-1, 1]$ ($y$ grows downwards);
        - word keys: "red" and "blue" point along those colours, "background" along black, "left" and
          "top" along $-x$ and $-y$;
        - $W_q$ = identity times a *sharpness* $\tau$ (the role $1/\sqrt d$ plays: it sets the temperature).
        """),
        code('''
        image = torch.maximum(render_shape("circle", "red", 12, (9, 10), IMAGE_SIZE),     # (3, S, S) in [-1, 1];
                              render_shape("square", "blue", 11, (22, 22), IMAGE_SIZE))   # black background = -1

        def pixel_features(image):
            """(3, S, S) -> (S*S, 5) tokens: colour (r, g, b) and position (x, y), all in [-1, 1]."""
            S = image.shape[-1]
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
            return rearrange(torch.cat([image, xs[None], ys[None]]), "c h w -> (h w) c")

        red, blue = image[:, 10, 9], image[:, 22, 22]            # the two colours as the renderer drew them
        words = ["red", "blue", "left", "top", "background"]
        word_keys = torch.stack([
            torch.cat([red, torch.zeros(2)]),                         # "red"
            torch.cat([blue, torch.zeros(2)]),                        # "blue"
            torch.tensor([0., 0., 0., -1.5, 0.]),                     # "left":  x = -1
            torch.tensor([0., 0., 0., 0., -1.5]),                     # "top":   y = -1
            torch.tensor([-1., -1., -1., 0., 0.]),                    # "background": black
        ])                                                            # (M=5, 5)

        def cross_attention_maps(image, sharpness=3.0):
            q = pixel_features(image) * sharpness                     # (N, 5): W_q = sharpness * identity
            _, A = scaled_dot_product_attention(q[None], word_keys[None], word_keys[None], return_weights=True)
            S = image.shape[-1]
            return rearrange(A[0], "(h w) m -> m h w", h=S)           # (M, S, S): one map per word

        maps = cross_attention_maps(image)
        fig = plot_attention_maps(image, maps, words)
        '''),
        md(r"""
        Each pixel's weights sum to 1 *across the words*, so the words compete: on the red disc "red" wins,
        on the black background "background" wins, and the position words take what is left on the side they
        point to. (`plot_attention_maps` rescales every map to [0, 1] on its own, so compare *where*, not
        *how much*.)

        **Self-attention** has one map per *query pixel*: where does this pixel look? With the same features,
        a pixel attends to pixels of a similar colour (and, through $x, y$, nearby ones). Turn the knobs: the
        query position and the sharpness (try a very large one to see saturation again).
        """),
        code('''
        def show_self_attention(row=10, col=9, sharpness=3.0):
            tokens = pixel_features(image)                                   # (N, 5)
            S = image.shape[-1]
            _, A = scaled_dot_product_attention((tokens * sharpness)[None], tokens[None], tokens[None],
                                                return_weights=True)         # (1, N, N)
            heat = A[0, row * S + col].reshape(S, S)                         # where pixel (row, col) looks
            fig, axes = plt.subplots(1, 2, figsize=(7, 3.3))
            axes[0].imshow(((image.permute(1, 2, 0) + 1) / 2).clamp(0, 1))
            axes[0].plot(col, row, "w+", ms=14, mew=2)
            axes[0].set_title(f"query pixel (row {row}, col {col})")
            im = axes[1].imshow(heat, cmap="magma")
            axes[1].set_title(f"its attention weights (sharpness {sharpness:g})\\nlargest weight {heat.max():.3f}")
            fig.colorbar(im, ax=axes[1], fraction=0.046)
            for ax in axes:
                ax.set_axis_off()
            fig.tight_layout()
            plt.show()

        show_self_attention()   # the static figure; the sliders below redraw it in a live notebook
        widgets.interact(show_self_attention, row=(0, IMAGE_SIZE - 1), col=(0, IMAGE_SIZE - 1),
                         sharpness=widgets.FloatLogSlider(value=3.0, base=10, min=-1, max=2, step=0.1));
        '''),
        md(r"""
        ## Summary

        - Attention = a softmax-weighted average of values; the weights compare queries with keys:
          $\mathrm{softmax}(QK^\top/\sqrt d)\,V$.
        - $1/\sqrt d$ keeps the score variance at 1. Without it the softmax saturates and its gradient vanishes.
        - Multi-head attention in practice: one projection matrix, a reshape into `(batch, heads, tokens, d)`,
          one batched (fused) attention call, a reshape back. Same numbers as the loop, much faster.
        - Self-attention: image looks at image, $(N \times N)$. Cross-attention: image looks at words,
          $(N \times M)$; that is where the prompt enters Stable Diffusion.
        - Masks remove keys by setting their scores to $-\infty$; a query with no key left has no defined output.

        ## Check your understanding

        1. You double the head width $d$ but forget the $1/\sqrt d$. By what factor does the standard
           deviation of the scores change, and what happens to the gradients reaching $W_q$ and $W_k$?
        2. `multi_head_fused` splits the channels with the pattern `"b n (three h d) -> three b h n d"`. What
           goes wrong (and would any check catch it?) if you wrote `"b n (h three d) -> ..."` instead with
           weights loaded from `nn.MultiheadAttention`?
        3. In Stable Diffusion's cross-attention, which of $Q$, $K$, $V$ come from the prompt? For a 64 x 64
           latent and a 77-token prompt, what is the shape of $A$ per head, and do the words' embeddings
           change after the layer?
        4. Why does CLIP's text encoder need a causal mask while the UNet's cross-attention needs none? What
           does a query whose mask row is all `False` produce, and how would you prevent it?

        <details><summary>Answers (try first)</summary>

        1. Scores scale like $\sqrt d$, so by $\sqrt 2$. The softmax gets sharper, its Jacobian
           $\mathrm{diag}(a) - aa^\top$ shrinks, and so do the gradients for $W_q$, $W_k$ (section 3's plot).
        2. The heads would get interleaved channels from q, k and v: the result is silently wrong (no shape
           error). Only an equality check against a reference, as in section 4, catches it.
        3. $K$ and $V$ come from the text, $Q$ from the image. $A$ is $4096 \times 77$. The words are not
           updated: the output has one row per image position.
        4. The text encoder was trained to read left to right (causal). The UNet reads the whole, finished
           prompt, so every position may see every word. An all-`False` row gives NaN (0/0 in the softmax),
           or whatever a fused kernel chooses to return; keep at least one key per row (e.g. never mask the
           start token).
        </details>
        """),
    ])


# ==========================================================================================================
# Lecture 3: DDPM
# ==========================================================================================================

def lecture_03():
    name = "03_ddpm.ipynb"
    return notebook([
        md(rf"""
        # Lecture 3 — DDPM: learning to undo noise

        A denoising diffusion probabilistic model (Ho et al. 2020) destroys images with Gaussian noise in many
        small steps, then learns to walk back. This is the generative engine of Stable Diffusion; here we build
        it on pixels of tiny handwritten digits, where you can watch every step. (Lecture 1's VAE would let
        us run the very same thing on latents: that is latent diffusion.)

        **What you will learn**
        - the forward process $q(x_t \mid x_{{t-1}})$ and its closed form $q(x_t \mid x_0)$, checked numerically;
        - beta schedules (linear, scaled-linear, cosine) and what $\bar\alpha_t$ means, with an interactive
          explorer;
        - the noise-prediction objective $\lVert \varepsilon - \varepsilon_\theta(x_t, t) \rVert^2$;
        - the reverse step (DDPM's Algorithm 2), written out and checked against `course_lib`'s scheduler;
        - training a small UNet on the scikit-learn digits and watching its $x_0$ predictions while sampling.

        **Prerequisites:** lecture 1 (Gaussians, the reparameterisation $z = \mu + \sigma\varepsilon$), a
        PyTorch training loop. Lecture 2 helps: the UNet contains attention layers.

        **Time:** about 5-7 minutes on a laptop CPU (most of it training a 0.7M-parameter UNet), about
        1-2 minutes on a Colab GPU. `FAST = True` runs everything in well under a minute with a barely trained
        model.

        {badge(name)}
        """),
        code(SETUP),
        code('''
        FAST = False              # True in CI: a few training steps, a short sampling chain
        SEED = 0
        IMAGE_SIZE = 16           # the 8 x 8 scikit-learn digits, resized to 16 x 16
        NUM_TRAIN_TIMESTEPS = 1000
        BATCH_SIZE = 64
        TRAIN_STEPS = 1200
        LEARNING_RATE = 2e-3
        NUM_SAMPLES = 32
        SAMPLING_STEPS = 1000     # the full chain, as in DDPM's Algorithm 2
        ''', tags=["parameters"]),
        code('''
        if FAST:  # same lesson, barely trained model
            BATCH_SIZE, TRAIN_STEPS, NUM_SAMPLES, SAMPLING_STEPS = 16, 20, 8, 20
        '''),
        code('''
        %matplotlib inline
        import math

        import ipywidgets as widgets
        import matplotlib.pyplot as plt
        import torch
        import torch.nn.functional as F

        from course_lib.data import load_digits
        from course_lib.schedulers import DDPMScheduler, make_betas
        from course_lib.train import EMA, cosine_schedule_with_warmup, train_loop
        from course_lib.unet import UNet, UNetConfig
        from course_lib.viz import image_grid, plot_losses, plot_schedule, plot_trajectory, show_images

        torch.manual_seed(SEED)
        if FAST:
            torch.set_num_threads(1)  # CI shares a busy machine: threads waiting on each other cost more than they save
        images, labels = load_digits(IMAGE_SIZE, split="train")       # (N, 1, 16, 16) in [-1, 1]
        test_images, _ = load_digits(IMAGE_SIZE, split="test")
        print("training digits:", tuple(images.shape))
        fig = show_images(images[:16], titles=[str(int(l)) for l in labels[:16]], ncols=16, figsize=(12, 1.3))
        '''),
        md(r"""
        ## 1. The forward process: destroying an image, one small step at a time

        Pick variances $\beta_1, \dots, \beta_T$ (small, e.g. $10^{-4}$ to $0.02$, $T = 1000$). Each step
        shrinks the image a little and adds a little fresh noise:

        $$q(x_t \mid x_{t-1}) = \mathcal N\!\left(\sqrt{1 - \beta_t}\, x_{t-1},\; \beta_t I\right).$$

        The shrinking keeps the variance bounded: if $x_{t-1}$ has unit variance, so does $x_t$. Write
        $\alpha_t = 1 - \beta_t$ and $\bar\alpha_t = \prod_{s \le t} \alpha_s$. Two Gaussian steps compose into one
        Gaussian (variances of independent noises add: $\alpha_t (1 - \alpha_{t-1}) + (1 - \alpha_t) =
        1 - \alpha_t \alpha_{t-1}$), and by induction we can jump from $x_0$ to any $x_t$ directly:

        $$q(x_t \mid x_0) = \mathcal N\!\left(\sqrt{\bar\alpha_t}\, x_0,\; (1 - \bar\alpha_t) I\right)
        \quad\Longleftrightarrow\quad
        x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \varepsilon,\;\; \varepsilon \sim \mathcal N(0, I).$$

        This closed form is what makes training cheap: no need to simulate the chain. `scheduler.add_noise`
        implements it. Let us check it against the chain itself, simulated step by step for many noise draws.
        (Code counts $t$ from 0, as diffusers does: `alphas_cumprod[t]` is $\bar\alpha_{t+1}$ of the paper.)
        """),
        code('''
        scheduler = DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="linear")
        betas, abar = scheduler.betas, scheduler.alphas_cumprod              # (T,) each

        x0 = images[0]                                                       # (1, 16, 16)
        g = torch.Generator().manual_seed(SEED)
        draws = 200 if FAST else 2000
        x = x0.expand(draws, -1, -1, -1).clone()                            # many copies, one chain each
        checkpoints = {49: None, 299: None, 999: None}
        for t in range(NUM_TRAIN_TIMESTEPS):                                 # the chain, one step at a time
            x = (1 - betas[t]).sqrt() * x + betas[t].sqrt() * torch.randn(x.shape, generator=g)
            if t in checkpoints:
                checkpoints[t] = x.clone()
        print(f"{draws} chains per pixel; sampling error of an empirical mean ~ 1/sqrt({draws}) = {draws ** -0.5:.3f}")
        for t, xt in checkpoints.items():
            mean_err = (xt.mean(0) - abar[t].sqrt() * x0).abs().mean()      # averaged over the 256 pixels
            std_err = (xt.std(0) - (1 - abar[t]).sqrt()).abs().mean()
            print(f"t={t:4d}: abar_t={abar[t]:.4f}   mean |empirical mean - sqrt(abar_t) x0| = {mean_err:.3f},  "
                  f"mean |empirical std - sqrt(1 - abar_t)| = {std_err:.3f}")
        '''),
        md(r"""
        The empirical mean and standard deviation of thousands of simulated chains match the closed form up to
        sampling error (which shrinks like $1/\sqrt{\text{draws}}$). Here is one digit at a few timesteps,
        jumping there directly:
        """),
        code('''
        shown_t = [0, 50, 100, 200, 300, 500, 700, 999]
        noise = torch.randn(images[:1].shape, generator=torch.Generator().manual_seed(SEED))
        noisy = [scheduler.add_noise(images[:1], noise, torch.tensor([t])) for t in shown_t]
        fig = show_images(torch.cat(noisy), titles=[f"t={t}, abar={abar[t]:.2f}" for t in shown_t], ncols=8,
                          figsize=(12, 1.8))
        '''),
        md(r"""
        ## 2. Beta schedules

        The schedule decides *how fast* the signal fades, i.e. the curve $\bar\alpha_t$ (the share of signal
        variance left) or equivalently the signal-to-noise ratio $\mathrm{SNR}(t) = \bar\alpha_t / (1 - \bar\alpha_t)$.

        - **linear** (DDPM): $\beta_t$ from $10^{-4}$ to $0.02$. On small images the signal is essentially gone
          well before $T$: many late steps are wasted on pure noise.
        - **scaled-linear** (Stable Diffusion, on latents): $\sqrt{\beta_t}$ linear from $\sqrt{0.00085}$ to
          $\sqrt{0.012}$. Gentler; the final step keeps a little signal.
        - **cosine** (Nichol & Dhariwal 2021): $\bar\alpha_t \propto \cos^2\!\big(\tfrac{\pi}{2}\,\tfrac{t/T + s}{1 + s}\big)$,
          a log-SNR that falls nearly linearly, so every step removes a similar amount of information.
        """),
        code('''
        schedules = {
            "linear": DDPMScheduler(NUM_TRAIN_TIMESTEPS, beta_schedule="linear"),
            "scaled_linear": DDPMScheduler(NUM_TRAIN_TIMESTEPS, beta_start=0.00085, beta_end=0.012,
                                           beta_schedule="scaled_linear"),
            "cosine": DDPMScheduler(NUM_TRAIN_TIMESTEPS, beta_schedule="cosine"),
        }
        fig = plot_schedule({name: s.alphas_cumprod for name, s in schedules.items()}, log_snr=True)
        plt.show()
        for name, s in schedules.items():
            a = s.alphas_cumprod
            half = int((a < 0.5).nonzero()[0])
            print(f"{name:14s} abar at the last step = {a[-1]:.2e};  half the signal variance is gone at t = {half}")
        '''),
        md(r"""
        None of them reaches $\bar\alpha_T = 0$ exactly: training never shows the model pure noise, yet sampling
        starts from it (Lin et al., WACV 2024, *Common diffusion noise schedules and sample steps are flawed*). For
        SD's scaled-linear schedule the leftover signal is noticeable: that is why SD struggles to make very
        dark or very bright images.

        **Explorer.** Pick a schedule and a timestep: the same noise is added to six digits, and the curve
        shows where you are. In a live notebook the controls redraw the figure; executed headless it shows the
        default setting.
        """),
        code('''
        explorer_noise = torch.randn(images[:6].shape, generator=torch.Generator().manual_seed(SEED))

        def explore(schedule="linear", t=200):
            chosen = schedules[schedule]
            noisy = chosen.add_noise(images[:6], explorer_noise, torch.tensor([t]))
            fig = plt.figure(figsize=(12, 2.8))
            ax = fig.add_axes((0.05, 0.17, 0.3, 0.7))
            for name, s in schedules.items():
                ax.plot(s.alphas_cumprod, lw=2.5 if name == schedule else 1, alpha=1 if name == schedule else 0.4,
                        label=name)
            a_t = chosen.alphas_cumprod[t].item()
            ax.plot([t], [a_t], "ko")
            ax.set(xlabel="t", ylabel=r"$\\bar\\alpha_t$", title=f"{schedule}: abar_t = {a_t:.3f}, SNR = {a_t / (1 - a_t):.3g}")
            ax.legend(fontsize=8)
            for i in range(6):
                image_ax = fig.add_axes((0.4 + i * 0.1, 0.17, 0.09, 0.7))
                image_ax.imshow(noisy[i, 0].clamp(-1, 1), cmap="gray", vmin=-1, vmax=1)
                image_ax.set_axis_off()
            plt.show()

        explore("linear", 200)   # the static figure; the controls below redraw it in a live notebook
        widgets.interact(explore, schedule=widgets.Dropdown(options=list(schedules), value="linear"),
                         t=widgets.IntSlider(value=200, min=0, max=NUM_TRAIN_TIMESTEPS - 1, step=10,
                                             continuous_update=False));
        '''),
        md(r"""
        We keep the **linear** schedule for the digits (as in the DDPM paper).

        ## 3. The objective: predict the noise

        Reversing the chain needs $q(x_{t-1} \mid x_t)$, which depends on the whole data distribution. But
        *given* $x_0$ the reverse step is a Gaussian with a closed form (DDPM eq. 7):

        $$q(x_{t-1} \mid x_t, x_0) = \mathcal N\big(\tilde\mu_t(x_t, x_0),\, \tilde\beta_t I\big),\quad
        \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1 - \bar\alpha_t}\, x_0 + \frac{\sqrt{\alpha_t}\,(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t}\, x_t,\quad
        \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}\,\beta_t.$$

        So a network only has to guess $x_0$ from $x_t$, or, equivalently (substitute
        $x_0 = (x_t - \sqrt{1 - \bar\alpha_t}\,\varepsilon)/\sqrt{\bar\alpha_t}$), the noise $\varepsilon$ that was
        added. Ho et al. found that predicting $\varepsilon$ with a plain mean-squared error works best:

        $$L_\text{simple} = \mathbb E_{x_0,\, \varepsilon \sim \mathcal N(0, I),\, t \sim \mathcal U\{1..T\}}
        \left\lVert \varepsilon - \varepsilon_\theta\big(\sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\,\varepsilon,\; t\big) \right\rVert^2.$$

        One training step = pick images, pick a random timestep for each, noise them in one jump, ask the
        network which noise it was. No chain is ever simulated during training.

        ## 4. The network

        $\varepsilon_\theta(x_t, t)$ is a UNet: convolutional ResBlocks at two resolutions (16 x 16 and 8 x 8)
        with skip connections, and the timestep fed in as a sinusoidal embedding added inside every ResBlock.
        `course_lib.unet.UNet` is Stable Diffusion's denoiser in miniature, so it expects a text condition
        (`encoder_hidden_states`, read by cross-attention in its middle block). Our DDPM is unconditional: we
        pass a constant, all-zero context of one token. The attention's `to_k`/`to_v` have no bias, so zero
        tokens give zero keys and values, and the cross-attention only adds a learned constant: the model
        ignores the "prompt". (A later lecture feeds real text embeddings.)
        """),
        code('''
        config = UNetConfig(in_channels=1, out_channels=1, block_channels=(32, 64), layers_per_block=1,
                            attention_levels=(), num_heads=4, context_dim=8, norm_groups=8)
        torch.manual_seed(SEED)
        unet = UNet(config)
        print(f"UNet parameters: {unet.num_parameters():,}")

        def null_context(batch_size):
            """The constant condition of an unconditional model: one all-zero token per image."""
            return torch.zeros(batch_size, 1, config.context_dim)

        with torch.no_grad():
            print("eps_theta(x_t, t, c):", tuple(unet(images[:4], torch.tensor([10, 200, 500, 999]), null_context(4)).shape))
        '''),
        md(r"""
        ## 5. Training

        The training step, exactly $L_\text{simple}$, runs inside `course_lib.train.train_loop` (progress bar,
        gradient clipping, learning-rate schedule). We also keep an exponential moving average (EMA) of the
        weights, as every diffusion model does: the averaged weights give visibly cleaner samples than the
        last, noisy iterate.
        """),
        code('''
        def step_fn(step, generator):
            x0 = images[torch.randint(0, len(images), (BATCH_SIZE,), generator=generator)]    # (B, 1, 16, 16)
            noise = torch.randn(x0.shape, generator=generator)                                 # eps
            t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (BATCH_SIZE,), generator=generator)     # one t per image
            x_t = scheduler.add_noise(x0, noise, t)                                            # q(x_t | x_0)
            return F.mse_loss(unet(x_t, t, null_context(BATCH_SIZE)), noise)                   # L_simple

        optimizer = torch.optim.AdamW(unet.parameters(), lr=LEARNING_RATE)
        lr_scheduler = cosine_schedule_with_warmup(optimizer, warmup_steps=min(100, TRAIN_STEPS // 10),
                                                   total_steps=TRAIN_STEPS)
        ema = EMA(unet, decay=0.995)
        history = train_loop(step_fn, TRAIN_STEPS, modules={"unet": unet}, optimizer=optimizer,
                             lr_scheduler=lr_scheduler, ema=ema, max_grad_norm=1.0,
                             generator=torch.Generator().manual_seed(SEED), desc="DDPM on digits")
        unet.eval()
        fig = plot_losses(history.losses, title="L_simple during training")
        '''),
        md(r"""
        The loss drops fast and then creeps down slowly, with a lot of noise: each batch draws different
        timesteps, and the difficulty depends strongly on $t$. Measure it per timestep on held-out digits:
        """),
        code('''
        @torch.no_grad()
        def loss_at(t, x0, generator):
            noise = torch.randn(x0.shape, generator=generator)
            t_batch = torch.full((len(x0),), t)
            return F.mse_loss(unet(scheduler.add_noise(x0, noise, t_batch), t_batch, null_context(len(x0))), noise).item()

        eval_t = torch.linspace(0, NUM_TRAIN_TIMESTEPS - 1, 12 if FAST else 25).long().tolist()
        with ema.average_parameters():
            per_t = [loss_at(t, test_images[:128], torch.Generator().manual_seed(SEED)) for t in eval_t]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(eval_t, per_t, "o-")
        ax.set(xlabel="timestep t", ylabel="MSE of eps prediction", yscale="log", title="held-out loss per timestep")
        ax.grid(alpha=0.3)
        plt.show()
        '''),
        md(r"""
        At small $t$ the noise is a faint film over a clean digit: telling it apart from the digit's own detail
        is hard, and the loss is high. At large $t$ the input is almost pure noise, so "the noise is the
        input" is nearly right and the loss is tiny. A low training loss therefore says little about sample
        quality: only sampling does.

        ## 6. The reverse step (Algorithm 2)

        Sampling starts from $x_T \sim \mathcal N(0, I)$ and applies, for $t = T, \dots, 1$,

        $$x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\left(x_t - \frac{\beta_t}{\sqrt{1 - \bar\alpha_t}}\,\varepsilon_\theta(x_t, t)\right) + \sigma_t z,
        \qquad z \sim \mathcal N(0, I) \text{ if } t > 1 \text{, else } z = 0,$$

        with $\sigma_t^2 = \tilde\beta_t$ (or $\beta_t$; both work). The first term is $\tilde\mu_t(x_t, \hat x_0)$
        with the network's guess $\hat x_0$ plugged in. Written out by hand, then compared with
        `DDPMScheduler.step` on the same input and the same fresh noise:
        """),
        code('''
        def ddpm_reverse_step(eps, t, x_t, z):
            """DDPM Algorithm 2, one step; t counts from 0 (so abar[t - 1] is the previous step, 1 before t = 0)."""
            alpha_t, abar_t = 1 - betas[t], abar[t]
            abar_prev = abar[t - 1] if t > 0 else torch.tensor(1.0)
            mean = (x_t - betas[t] / (1 - abar_t).sqrt() * eps) / alpha_t.sqrt()
            sigma = ((1 - abar_prev) / (1 - abar_t) * betas[t]).sqrt()       # sqrt(beta~_t), "fixed_small"
            return mean + sigma * z if t > 0 else mean

        reference = DDPMScheduler(NUM_TRAIN_TIMESTEPS, beta_schedule="linear", clip_sample=False)
        gen = torch.Generator().manual_seed(SEED)
        x_t, z = torch.randn(2, 4, 1, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
        for t in (999, 500, 10, 0):
            with torch.no_grad():
                eps = unet(x_t, t, null_context(4))
            ours = ddpm_reverse_step(eps, t, x_t, z)
            theirs = reference.step(eps, t, x_t, variance_noise=z).prev_sample
            print(f"t={t:3d}: max |hand-written - DDPMScheduler.step| = {(ours - theirs).abs().max():.1e}")
        '''),
        md(r"""
        Same step, up to float32 rounding: the two formulas are equal on paper but divide by different small
        numbers (near $t = 0$, $1 - \bar\alpha_t \approx 10^{-3}$ magnifies the rounding). (`clip_sample=False` for the comparison: by default the scheduler, like diffusers', clips its
        estimate $\hat x_0$ to $[-1, 1]$ before forming the mean, a cheap and useful guard for pixel data.)

        ## 7. Sampling, and watching $\hat x_0$

        The sampling loop is five lines. At every step `step` also returns `pred_original_sample`, the model's
        current guess $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta)/\sqrt{\bar\alpha_t}$. We keep
        both at a few moments of the run.
        """),
        code('''
        def sample(num_samples, num_steps, seed, record=8):
            scheduler.set_timesteps(num_steps)
            keep = set(torch.linspace(0, num_steps - 1, record).round().long().tolist())
            generator = torch.Generator().manual_seed(seed)
            x = torch.randn(num_samples, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)   # x_T
            trajectory, predictions, recorded_t = [], [], []
            with torch.no_grad(), ema.average_parameters():
                for i, t in enumerate(scheduler.timesteps):
                    eps = unet(x, t, null_context(num_samples))
                    out = scheduler.step(eps, t, x, generator=generator)
                    x = out.prev_sample
                    if i in keep:
                        trajectory.append(x); predictions.append(out.pred_original_sample); recorded_t.append(int(t))
            return x, trajectory, predictions, recorded_t

        samples, trajectory, predictions, recorded_t = sample(NUM_SAMPLES, SAMPLING_STEPS, seed=SEED)
        fig = plot_trajectory(trajectory, recorded_t, max_images=4)
        fig.suptitle("x_t along the reverse chain", y=1.02)
        plt.show()
        fig = plot_trajectory(predictions, recorded_t, max_images=4)
        fig.suptitle("the model's guess of x_0 at the same steps", y=1.02)
        plt.show()
        '''),
        md(r"""
        Read the two figures column by column. At the very first step $\hat x_0$ is junk: it divides by
        $\sqrt{\bar\alpha_T} \approx 0.006$, which magnifies every error 160-fold (the clip to $[-1, 1]$ then
        saturates it). A few hundred steps later, while $x_t$ still looks like pure noise, $\hat x_0$ is a blurry
        blob in the middle: the model guesses the *average* of all digits compatible with what it sees. Around
        the middle of the chain it commits to one digit, and the remaining steps only sharpen it: **coarse
        structure is decided first, fine detail last**, a pattern you will meet again in SD (and exploit in
        img2img, which starts part-way down the chain).

        Samples next to real digits:
        """),
        code('''
        fig, axes = plt.subplots(1, 2, figsize=(11, 1.5 + 0.7 * math.ceil(NUM_SAMPLES / 8)))
        for ax, batch, title in ((axes[0], samples, f"DDPM samples ({SAMPLING_STEPS} steps)"),
                                 (axes[1], test_images[:NUM_SAMPLES], "real digits (held out)")):
            ax.imshow(image_grid(batch, nrow=8))          # uint8 (H, W, 3), white lines between the digits
            ax.set_title(title); ax.set_axis_off()
        fig.tight_layout()
        plt.show()
        '''),
        md(r"""
        With `scheduler.set_timesteps(n)` the same scheduler takes bigger jumps ($t \to t'$, using the
        $\bar\alpha$ of the jump instead of one step). DDPM's ancestral sampling was designed for the full chain;
        with 100 and then 20 steps the digits get smoother and lose detail, and some stop looking like digits.
        The DDIM sampler, coming next, is built for few steps.
        """),
        code('''
        few = [(n, sample(8, n, seed=SEED + 1, record=2)[0]) for n in ([100, 20] if not FAST else [10, 5])]
        fig = show_images(torch.cat([s for _, s in few]), ncols=8,
                          titles=[f"{n} steps" for n, s in few for _ in range(len(s))], figsize=(10, 2.8))
        '''),
        md(r"""
        ## Summary

        - Forward process: $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$, one jump from
          $x_0$; the schedule $\beta_t$ fixes the curve $\bar\alpha_t$ (linear, scaled-linear for SD, cosine).
        - Training: noise an image to a random $t$, regress the noise: $\lVert \varepsilon - \varepsilon_\theta(x_t, t)\rVert^2$.
        - Sampling: start from $\mathcal N(0, I)$ and apply Algorithm 2 $T$ times; each step forms $\hat x_0$, the
          posterior mean $\tilde\mu_t(x_t, \hat x_0)$ and adds $\sigma_t z$.
        - The model decides the coarse layout at high noise and the details at low noise.

        ## Check your understanding

        1. With the linear schedule, $\bar\alpha_{999} \approx 4 \times 10^{-5}$. Write $x_{999}$ in terms of
           $x_0$ and $\varepsilon$. How much of the digit is left, in standard deviations of the noise?
        2. Why can training use a *random* timestep for each image, instead of running the chain from $t = 0$?
           Which formula makes that possible?
        3. In Algorithm 2 no noise is added on the last step ($z = 0$ for $t = 1$). What would a last
           $\sigma_1 z$ do to the final image?
        4. The held-out loss is highest at small $t$. Does that mean the model produces bad fine details, and
           would you weight those timesteps more during training? (Hint: look at how the loss of
           $\varepsilon$ translates into an error on $\hat x_0$.)

        <details><summary>Answers (try first)</summary>

        1. $x_{999} = 0.0064\, x_0 + 0.99998\, \varepsilon$: the digit is there at about 0.6% of the noise's
           standard deviation, invisible (and not exactly zero: see section 2).
        2. Because $q(x_t \mid x_0)$ has a closed form: $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$.
        3. It would put fresh noise of standard deviation $\sigma_1$ on the result: a slightly grainy image.
           $\hat x_0$ is the best guess at that point; noising it helps nothing.
        4. Not necessarily. $\hat x_0 - x_0 = -\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}\,(\hat\varepsilon - \varepsilon)$: at small
           $t$ the factor is tiny, so a large $\varepsilon$ error is a small image error. The loss weighting
           across $t$ is a real design choice (min-SNR weighting, v-prediction), discussed later in the course.
        </details>
        """),
    ])

# ==========================================================================================================

BUILDERS = {"01_pixels_to_latents.ipynb": "lecture_01", "02_attention.ipynb": "lecture_02",
            "03_ddpm.ipynb": "lecture_03"}


def main(prefixes: list[str]) -> None:
    for name, builder in BUILDERS.items():
        if prefixes and not any(name.startswith(p) for p in prefixes):
            continue
        nb = globals()[builder]()
        nbformat.validate(nb)
        path = ROOT / "lectures" / name
        nbformat.write(nb, path)
        print("wrote", path.relative_to(ROOT))


if __name__ == "__main__":
    main(sys.argv[1:])
