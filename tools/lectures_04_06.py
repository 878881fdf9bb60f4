"""Build lectures 4-6 (sampling and guidance, CLIP, Stable Diffusion in miniature) as notebooks.

    .venv/bin/python tools/lectures_04_06.py            # writes lectures/04_*.ipynb, 05_*.ipynb, 06_*.ipynb

The notebooks are written without outputs; run them (papermill or Jupyter) to fill in the figures.
Each notebook is a list of cells below: ``md(...)`` for prose, ``code(...)`` for code, ``params(...)`` for the
papermill parameters cell.
"""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
REPO_URL = "https://github.com/sd-course/latent-diffusion-course"


def md(text: str):
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text: str, helper: bool = False):
    """A code cell; helper=True appends the widget helper ``attach_widget`` (for the imports cell)."""
    source = textwrap.dedent(text).strip("\n")
    if helper:
        source += "\n\n\n" + textwrap.dedent(WIDGET_HELPER).strip("\n")
    return nbformat.v4.new_code_cell(source)


def params(text: str):
    cell = code(text)
    cell.metadata["tags"] = ["parameters"]
    return cell


def badge(name: str) -> str:
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/main/lectures/{name})")


SETUP = code('''
    # Colab: install the course library; Colab's own torch stays (the course asks for torch>=2.1).
    import sys, subprocess
    if "google.colab" in sys.modules:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        "course_lib @ git+https://github.com/sd-course/latent-diffusion-course"], check=True)
''')

# The slider helper every notebook uses: the figure for the default value is drawn by an ordinary call above
# it (so a notebook run without a front-end still shows it); moving the slider redraws into an Output widget.
WIDGET_HELPER = '''
    def attach_widget(draw, control):
        """Redraw ``draw(value)`` below ``control`` (a slider, a text box) whenever its value changes.
        Nothing runs until it does: the figure for the default value is drawn by a plain call above."""
        out = widgets.Output()

        def redraw(change):
            with out:
                out.clear_output(wait=True)
                draw(change["new"])
                plt.show()

        control.observe(redraw, names="value")
        display(widgets.VBox([control, out]))
'''


def notebook(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


# ==========================================================================================================
# Lecture 4: faster sampling and guidance
# ==========================================================================================================

def lecture_04():
    name = "04_sampling_and_guidance.ipynb"
    return name, notebook([
        md(f'''
        # Lecture 4 — Faster sampling and guidance: DDIM, classifier-free guidance, thresholding

        {badge(name)}

        Lecture 3's DDPM sampler needs one network call per training timestep: 1000 calls for one picture. And a
        model trained on all of its data generates *some* sample of the data, not the one you asked for. This
        lecture fixes both, with the two tricks every Stable Diffusion run uses.

        **What you will learn**
        - why DDIM can skip most of the 1000 steps **without retraining**: a non-Markovian process with the
          same marginals $q(x_t \\mid x_0)$, and the role of $\\eta$ (deterministic at 0, DDPM-like at 1);
        - how quality and time trade off: DDIM with 10 / 25 / 50 steps against DDPM's 1000;
        - how to condition a diffusion model on a class (the same mechanism will carry text in lecture 6);
        - **classifier-free guidance**: train one network with the condition dropped 10% of the time, sample with
          $\\hat\\epsilon = \\epsilon_u + w\\,(\\epsilon_c - \\epsilon_u)$, and what the guidance scale $w$ buys and costs;
        - why a large $w$ saturates images, and Imagen's **static and dynamic thresholding** of $\\hat x_0$.

        **Prerequisites**: lecture 3 (DDPM: forward process, $\\epsilon$-prediction, Algorithms 1 and 2), PyTorch basics.

        **Time**: `FAST=True` under a minute. The full lesson trains a small class-conditional model on handwritten
        digits in the notebook: about 5 minutes on a 2-core CPU (measured: 5½ minutes on our 2-core test machine, 1½
        of them for the 1000-step DDPM chain; twice that when the machine was shared), 1–2 minutes on a Colab GPU.
        '''),
        SETUP,
        params('''
            FAST = False          # True: tiny sizes that only check the plumbing (CI)
            SEED = 0
            THREADS = 1           # torch CPU threads; tiny models gain little from more, and lose a lot on a busy CPU
            TRAIN_STEPS = 2000    # optimizer steps for the class-conditional digit model
            BATCH_SIZE = 64
            DDPM_STEPS = 1000     # the full DDPM chain
            SAMPLES_PER_DIGIT = 10  # images per class when we measure quality
        '''),
        code('''
            if FAST:  # derived sizes: every section still runs, the pictures are not meant to be good
                TRAIN_STEPS, BATCH_SIZE, DDPM_STEPS, SAMPLES_PER_DIGIT = 60, 32, 100, 2
        '''),
        code('''
            import time

            import ipywidgets as widgets
            import matplotlib.pyplot as plt
            import numpy as np
            import torch
            from IPython.display import display
            from sklearn.linear_model import LogisticRegression
            from torch import nn
            from tqdm.auto import tqdm

            from course_lib.data import load_digits
            from course_lib.guidance import cfg_combine, drop_condition, dynamic_threshold, static_threshold
            from course_lib.metrics import frechet_distance
            from course_lib.schedulers import DDIMScheduler, DDPMScheduler
            from course_lib.train import EMA, cosine_schedule_with_warmup
            from course_lib.unet import UNet, UNetConfig
            from course_lib.viz import image_grid, plot_losses, show_images

            torch.set_num_threads(THREADS)
            torch.manual_seed(SEED)
            plt.rcParams["figure.dpi"] = 80   # inline figures: readable, and small enough to keep in git
        ''', helper=True),
        md('''
        ## 1. Data and a referee

        scikit-learn ships 1,797 handwritten digits of 8 × 8 pixels: real data, no download, small enough to train a
        diffusion model on a CPU in minutes. We keep their native 8 × 8 (lecture 3 resized them to 16 × 16): four times
        fewer pixels, so training and the 1000-step DDPM chain stay short. Pixels are in $[-1, 1]$ (background $-1$), as
        the diffusion model sees them.

        To talk about quality with numbers and not only with our eyes, we use two measures:
        - a **referee**: a logistic-regression digit classifier fitted on the real training images. A generated "7"
          counts as right when the referee reads a 7 (*does the image show what we asked for?*);
        - a **pixel Fréchet distance** (FD): fit a Gaussian to the 64 pixel values of the generated images and one to
          the real digits, and measure how far apart they are, $\\|\\mu_1-\\mu_2\\|^2 + \\mathrm{Tr}(\\Sigma_1+\\Sigma_2-2(\\Sigma_1\\Sigma_2)^{1/2})$
          (*do the images look like real digits, with their variety?*). This is FID's formula on raw pixels instead of
          Inception features; it depends on the number of images, so we always compare equal-sized sets.

        Real text-to-image models are judged the same way, with bigger referees: CLIP score and FID.
        '''),
        code('''
            train_x, train_y = load_digits(image_size=8, split="train", seed=SEED)   # (N, 1, 8, 8) in [-1, 1], (N,)
            test_x, test_y = load_digits(image_size=8, split="test", seed=SEED)
            print(f"train {tuple(train_x.shape)}, test {tuple(test_x.shape)}, range [{train_x.min():.0f}, {train_x.max():.0f}]")

            referee = LogisticRegression(max_iter=2000).fit(train_x.flatten(1).numpy(), train_y.numpy())
            print(f"referee accuracy on real test digits: {referee.score(test_x.flatten(1).numpy(), test_y.numpy()):.3f}")


            def referee_accuracy(images, labels):
                """Share of generated images the referee reads as the digit we asked for."""
                predicted = referee.predict(images.clamp(-1, 1).flatten(1).numpy())
                return float((predicted == labels.numpy()).mean())


            def pixel_statistics(images):
                x = images.clamp(-1, 1).flatten(1).double()    # (B, 64): what you would see on screen
                return x.mean(dim=0), torch.cov(x.T)


            REAL_STATISTICS = pixel_statistics(train_x)


            def pixel_fd(images):
                """Frechet distance between the pixel statistics of ``images`` and of the real training digits."""
                return frechet_distance(*pixel_statistics(images), *REAL_STATISTICS)


            def grid_with_labels(ax, groups, labels, nrow=10, title=None):
                """Draw batches of images as one grid; each batch fills whole rows, its label sits at their centre."""
                images = torch.cat(groups)
                ax.imshow(image_grid(images, nrow=nrow), interpolation="nearest")
                tile, row, centres = images.shape[-1] + 2, 0, []      # image_grid's default padding is 2 pixels
                for group in groups:
                    rows = -(-len(group) // nrow)
                    centres.append(1 + tile * (row + rows / 2))
                    row += rows
                ax.set_yticks(centres, labels, fontsize=9)
                ax.set_xticks([])
                ax.tick_params(length=0)
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if title:
                    ax.set_title(title, fontsize=10)


            first_of_each = torch.stack([train_x[train_y == d][:4] for d in range(10)], dim=1).flatten(0, 1)
            fig = show_images(first_of_each, ncols=10, figsize=(8, 3.4))
            fig.suptitle("real digits (each column one class)", y=1.02);
        '''),
        md('''
        ## 2. A class-conditional denoiser, trained for classifier-free guidance

        The network is the course's UNet (`course_lib.unet`, the same one Stable Diffusion's miniature uses in
        lecture 6), here with one input channel for grey pixels. It is conditioned the way Stable Diffusion is
        conditioned on text: through **cross-attention to a sequence of context vectors**. For a class label the
        sequence is a single learned vector, the label's embedding, so the context is $(B, 1, d)$; for text it will be
        the 77 token vectors of a prompt.

        One extra label, `NULL = 10`, means "no condition". **Classifier-free guidance** (Ho & Salimans 2022) needs
        both $\\epsilon_\\theta(x_t, t, c)$ and $\\epsilon_\\theta(x_t, t, \\varnothing)$. Instead of training two networks we
        train one and, in each batch, replace the label by `NULL` with probability $p_{\\text{uncond}} = 0.1$
        (`course_lib.guidance.drop_condition`). Everything else is lecture 3's Algorithm 1:

        $$\\mathcal L = \\mathbb E_{x_0, c, t, \\epsilon}\\big\\|\\epsilon - \\epsilon_\\theta\\big(\\sqrt{\\bar\\alpha_t}\\,x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon,\\; t,\\; \\tilde c\\big)\\big\\|^2,
        \\qquad \\tilde c = \\begin{cases}\\varnothing & \\text{with probability } 0.1\\\\ c & \\text{otherwise}\\end{cases}$$
        '''),
        code('''
            NULL = 10            # the "no condition" label
            P_UNCOND = 0.1       # condition dropout probability
            CONTEXT_DIM = 32


            class LabelContext(nn.Module):
                """Class labels (B,) -> a one-token context (B, 1, CONTEXT_DIM) for the UNet's cross-attention."""

                def __init__(self, num_labels: int = 11, dim: int = CONTEXT_DIM):
                    super().__init__()
                    self.embedding = nn.Embedding(num_labels, dim)

                def forward(self, labels: torch.Tensor) -> torch.Tensor:
                    return self.embedding(labels)[:, None, :]


            class DigitDenoiser(nn.Module):
                """eps_theta(x_t, t, c) for 8x8 digits: label context + UNet."""

                def __init__(self):
                    super().__init__()
                    self.context = LabelContext()
                    self.unet = UNet(UNetConfig(in_channels=1, out_channels=1, block_channels=(16, 32),
                                                attention_levels=(), num_heads=2, context_dim=CONTEXT_DIM,
                                                norm_groups=8))

                def forward(self, x_t, t, labels):
                    return self.unet(x_t, t, self.context(labels))


            model = DigitDenoiser()
            noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")  # lecture 3's schedule
            print(f"{sum(p.numel() for p in model.parameters()):,} parameters")
        '''),
        code('''
            optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
            lr_schedule = cosine_schedule_with_warmup(optimizer, warmup_steps=max(1, TRAIN_STEPS // 20),
                                                      total_steps=TRAIN_STEPS)
            ema = EMA(model, decay=0.995)   # sampling uses an average of recent weights: smoother samples
            generator = torch.Generator().manual_seed(SEED)
            losses = []
            start = time.perf_counter()
            for step in tqdm(range(TRAIN_STEPS), desc="training"):
                idx = torch.randint(0, len(train_x), (BATCH_SIZE,), generator=generator)
                x0 = train_x[idx]
                labels = drop_condition(train_y[idx], NULL, p=P_UNCOND, generator=generator)  # 10% -> NULL
                t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (BATCH_SIZE,), generator=generator)
                eps = torch.randn(x0.shape, generator=generator)
                x_t = noise_scheduler.add_noise(x0, eps, t)
                loss = (model(x_t, t, labels) - eps).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                lr_schedule.step()
                ema.update()
                losses.append(loss.item())
            print(f"{TRAIN_STEPS} steps in {time.perf_counter() - start:.0f} s, last losses {np.mean(losses[-50:]):.3f}")
            ema.copy_to(model)
            model.eval()
            fig = plot_losses(losses, title="noise-prediction loss (with 10% unconditional rows)")
        '''),
        md('''
        ## 3. One sampling loop for everything

        Every sampler in this lecture is the same five-line loop: set the timesteps, and at each one run the network
        on a **doubled batch** (unconditional rows first, as in diffusers), combine the two predictions with the
        guidance scale, and let the scheduler take a step. Only the scheduler object changes.

        The loop hands the scheduler $\\hat x_0$ instead of $\\hat\\epsilon$ (a scheduler built with
        `prediction_type="sample"` accepts either), so that section 6 can edit $\\hat x_0$ before the step. Without an
        edit this is exactly the usual $\\epsilon$ step: the scheduler turns $\\hat x_0$ back into the same $\\hat\\epsilon$.
        With an edit, $\\hat\\epsilon$ is re-derived from the edited $\\hat x_0$, so the two stay consistent (GLIDE does this;
        diffusers calls it `use_clipped_model_output=True`). Clipping $\\hat x_0$ but keeping the old $\\hat\\epsilon$, which
        is what a DDIM scheduler with `clip_sample=True` does by default, mixes two different guesses of the clean image
        and, with strong guidance, ruins DDIM samples.
        '''),
        code('''
            def make_scheduler(kind: str = "ddim", num_inference_steps: int = 25):
                """A DDPM or DDIM sampler on the training schedule, fed x0_hat; no clipping unless we ask for it."""
                cls = DDIMScheduler if kind == "ddim" else DDPMScheduler
                scheduler = cls.from_config({**noise_scheduler.config.to_dict(), "prediction_type": "sample",
                                             "clip_sample": False})
                scheduler.set_timesteps(num_inference_steps)
                return scheduler


            @torch.no_grad()
            def sample(labels, guidance_scale=3.0, kind="ddim", num_inference_steps=25, eta=0.0, seed=0,
                       threshold=None, record_at=None, x_T=None):
                """Generate one image per label. threshold: None or a function applied to x0_hat at every step.
                record_at: a step index whose (unthresholded) x0_hat is returned too, for the histograms."""
                scheduler = make_scheduler(kind, num_inference_steps)
                g = torch.Generator().manual_seed(seed)
                x = torch.randn(len(labels), 1, 8, 8, generator=g) if x_T is None else x_T.clone()
                both_labels = torch.cat([torch.full_like(labels, NULL), labels])        # unconditional first
                recorded = None
                for i, t in enumerate(scheduler.timesteps):
                    eps_uncond, eps_cond = model(torch.cat([x, x]), t, both_labels).chunk(2)
                    eps = cfg_combine(eps_uncond, eps_cond, guidance_scale)              # eps_u + w (eps_c - eps_u)
                    abar = scheduler.alphas_cumprod[t]
                    x0_hat = (x - (1 - abar).sqrt() * eps) / abar.sqrt()                   # DDPM eq. (15)
                    if i == record_at:
                        recorded = x0_hat.clone()
                    if threshold is not None:
                        x0_hat = threshold(x0_hat)
                    extra = {"eta": eta} if kind == "ddim" else {}
                    x = scheduler.step(x0_hat, t, x, generator=g, **extra).prev_sample
                return (x, recorded) if record_at is not None else x


            digits = torch.arange(10).repeat(SAMPLES_PER_DIGIT)   # 0..9, 0..9, ...: the labels we ask for
            print(f"pixel FD of {len(digits)} real test digits (the best a generator can hope for at this set size): "
                  f"{pixel_fd(test_x[:len(digits)]):.2f}")
        '''),
        md('''
        ## 4. DDIM: skipping steps without retraining

        DDPM's reverse process is Markovian: $x_{t-1}$ is drawn from $q(x_{t-1} \\mid x_t, \\hat x_0)$, and the chain
        must visit every $t$. DDIM (Song, Meng & Ermon 2021) notices that the training loss only ever uses the
        marginals $q(x_t \\mid x_0) = \\mathcal N(\\sqrt{\\bar\\alpha_t}\\,x_0, (1-\\bar\\alpha_t) I)$. Many *non-Markovian* forward
        processes have these same marginals, so a network trained for DDPM is already trained for all of them. DDIM
        picks the family

        $$x_{t'} = \\sqrt{\\bar\\alpha_{t'}}\\,\\hat x_0 \\;+\\; \\sqrt{1 - \\bar\\alpha_{t'} - \\sigma_t^2}\\;\\hat\\epsilon \\;+\\; \\sigma_t z,
        \\qquad \\hat x_0 = \\frac{x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\hat\\epsilon}{\\sqrt{\\bar\\alpha_t}} \\qquad \\text{(DDIM eq. 12)}$$

        "predicted $x_0$", "direction pointing to $x_t$", fresh noise. Two consequences:
        - $t'$ need not be $t-1$: the same formula jumps from $t$ to any earlier $t'$, so 25 of the 1000 timesteps
          (960, 920, …, 0) are enough;
        - the noise level is free: $\\sigma_t(\\eta) = \\eta\\sqrt{\\tfrac{1-\\bar\\alpha_{t'}}{1-\\bar\\alpha_t}}\\sqrt{1-\\tfrac{\\bar\\alpha_t}{\\bar\\alpha_{t'}}}$
          (eq. 16). $\\eta = 1$ gives DDPM's posterior variance; $\\eta = 0$ adds no noise at all: sampling becomes a
          **deterministic** map from $x_T$ to $x_0$ (a discretised ODE), which is what makes few steps work well.

        Let's time DDPM's full chain against DDIM with 10, 25 and 50 steps, on the same starting noise, with
        guidance $w = 3$ (section 5 explains $w$), and let the referee score them.
        '''),
        code('''
            W_COMPARE = 3.0
            runs = [("ddpm", DDPM_STEPS), ("ddim", 10), ("ddim", 25), ("ddim", 50)]
            results = {}
            for kind, steps in tqdm(runs, desc="samplers"):
                start = time.perf_counter()
                images = sample(digits, W_COMPARE, kind=kind, num_inference_steps=steps, eta=0.0, seed=SEED)
                seconds = time.perf_counter() - start
                results[f"{kind.upper()} {steps}"] = dict(images=images, seconds=seconds,
                                                        accuracy=referee_accuracy(images, digits), fd=pixel_fd(images))
            for name, r in results.items():
                print(f"{name:>10}: {r['seconds']:6.1f} s for {len(digits)} images, referee accuracy {r['accuracy']:.2f}, "
                      f"pixel FD {r['fd']:.2f}")
        '''),
        code('''
            fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.5, 1]})
            grid_with_labels(axes[0], [r["images"][:20] for r in results.values()],
                             [f"{name}\\n{r['seconds']:.1f} s\\nacc {r['accuracy']:.2f}\\nFD {r['fd']:.1f}"
                              for name, r in results.items()],
                             title=f"the same starting noise and labels, w = {W_COMPARE:g}")
            names = list(results)
            ax = axes[-1]
            ax.bar(names, [results[n]["seconds"] for n in names], color="C0")
            ax.set_ylabel("seconds", color="C0")
            ax.set_yscale("log")
            ax.tick_params(axis="x", labelrotation=30)
            ax2 = ax.twinx()
            ax2.plot(names, [results[n]["fd"] for n in names], "o-", color="C3")
            ax2.set_ylim(0, 1.2 * max(results[n]["fd"] for n in names))
            ax2.set_ylabel("pixel FD to real digits (lower is better)", color="C3")
            ax.set_title("time (bars, log scale) and realism (line)")
            fig.tight_layout()
        '''),
        md('''
        Each DDIM step costs the same as a DDPM step, so time is proportional to the number of steps: DDIM with 25
        steps is about 40x faster than the 1000-step chain. The referee cannot tell them apart; the pixel FD sees a
        small gap: the stochastic 1000-step chain matches the real digits' statistics about as well as held-out real
        digits do, the deterministic DDIM shortcut lands a little further away, and about equally far with 10, 25 or
        50 steps. (On large images very few steps cost fine detail first; Stable Diffusion's default, 50 DDIM/PNDM
        steps, sits where that curve has flattened.)

        **$\\eta$: from deterministic to stochastic.** Now fix the starting noise $x_T$ and vary $\\eta$ and the number of
        steps. At $\\eta = 0$ the result is a function of $x_T$ alone: 10, 25 and 50 steps give nearly the same digit,
        so $x_T$ behaves like a latent code (this is what makes DDIM *inversion* and image editing possible). As $\\eta$
        grows, fresh noise enters at every step and the samples drift apart: at $\\eta = 1$ the same $x_T$ gives a
        different-looking digit for each number of steps.
        '''),
        code('''
            eta_labels = torch.arange(10)
            x_T = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(SEED + 1))
            rows, names = [], []
            for eta in (0.0, 0.5, 1.0):
                for steps in (10, 25, 50):
                    rows.append(sample(eta_labels, W_COMPARE, "ddim", steps, eta=eta, seed=SEED + 2, x_T=x_T))
                    names.append(f"eta={eta:g}, {steps} steps")
            fig, ax = plt.subplots(figsize=(6, 6.2))
            grid_with_labels(ax, rows, names, title="the same x_T in every row: DDIM, eta x number of steps")

            same_code = [torch.nn.functional.mse_loss(rows[i].clamp(-1, 1), rows[i + 2].clamp(-1, 1)).item()
                         for i in (0, 3, 6)]
            print("mean squared difference between 10 and 50 steps, same x_T: "
                  + ", ".join(f"eta={e:g}: {d:.3f}" for e, d in zip((0, 0.5, 1), same_code)))
        '''),
        md('''
        ## 5. Classifier-free guidance

        Why does mixing two predictions help? For a noisy sample the network's output is a scaled score,
        $\\epsilon_\\theta(x_t, c) \\approx -\\sqrt{1-\\bar\\alpha_t}\\,\\nabla_{x_t} \\log p(x_t \\mid c)$. Bayes' rule,
        $\\log p(c \\mid x_t) = \\log p(x_t \\mid c) - \\log p(x_t) + \\text{const}$, says that the *difference*
        $\\epsilon_c - \\epsilon_u$ points along $-\\nabla \\log p(c \\mid x_t)$. The sampler *subtracts* predicted noise, so
        each extra helping of that difference moves $x_t$ up the gradient of $\\log p(c \\mid x_t)$: towards images that
        an implicit classifier, hidden in the two predictions, finds more typical of $c$. Guidance follows the
        unconditional score plus $w$ times that direction:

        $$\\hat\\epsilon = \\epsilon_\\theta(x_t, \\varnothing) + w\\,\\big(\\epsilon_\\theta(x_t, c) - \\epsilon_\\theta(x_t, \\varnothing)\\big)
        \\quad\\Longleftrightarrow\\quad \\text{sampling from } \\; p(x)\\,p(c \\mid x)^{w}.$$

        - $w = 0$: the unconditional model, the label is ignored;
        - $w = 1$: the plain conditional model, $p(x \\mid c)$;
        - $w > 1$: an exaggerated condition: fewer ambiguous digits, less variety (Stable Diffusion's default is 7.5).

        (Ho & Salimans write the same rule with $1 + w$ where we write $w$; diffusers and this course use the form
        above.) It costs two network evaluations per step; we batch them as one call on the doubled batch.
        '''),
        code('''
            SCALES = (0.0, 1.0, 3.0, 7.5)
            guided = {w: sample(digits, w, "ddim", 25, seed=SEED) for w in tqdm(SCALES, desc="guidance scales")}
            accuracy = {w: referee_accuracy(guided[w], digits) for w in SCALES}
            fd = {w: pixel_fd(guided[w]) for w in SCALES}

            fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.5, 1]})
            grid_with_labels(axes[0], [guided[w][:20] for w in SCALES],
                             [f"w = {w:g}\\nacc {accuracy[w]:.2f}\\nFD {fd[w]:.1f}" for w in SCALES],
                             title="the same starting noise, four guidance scales (DDIM, 25 steps)")
            ax = axes[1]
            ax.plot(SCALES, [accuracy[w] for w in SCALES], "o-", color="C0")
            ax.set_ylim(0, 1.05)
            ax.set_xlabel("guidance scale w")
            ax.set_ylabel("referee accuracy", color="C0")
            ax2 = ax.twinx()
            ax2.plot(SCALES, [fd[w] for w in SCALES], "s--", color="C3")
            ax2.set_ylabel("pixel FD to real digits", color="C3")
            ax.set_title("shows the asked-for digit (left axis)\\nvs looks like real data (right axis)")
            fig.tight_layout()
        '''),
        md('''
        The numbers tell the classic story of guidance: the referee's accuracy jumps from chance at $w = 0$ (the label
        is ignored) to nearly 1, while the pixel FD is best around $w = 1$ and grows with $w$: stronger guidance means
        less variety and harsher images. Text-to-image models pick $w$ on exactly this trade-off (FID against CLIP
        score curves).

        Turn the knob yourself: the slider samples one of each digit (DDIM, 25 steps, the same noise for every value)
        at the guidance scale you pick. Watch the digits become unambiguous, then thick and blown-out beyond
        $w \\approx 8$.
        '''),
        code('''
            slider_x_T = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(SEED + 3))


            def show_guidance(w):
                images = sample(torch.arange(10), float(w), "ddim", 25, seed=SEED, x_T=slider_x_T)
                fig = show_images(images, titles=[str(d) for d in range(10)], ncols=10, figsize=(9, 1.6))
                fig.suptitle(f"guidance scale w = {w:g}", y=1.08)
                return fig


            show_guidance(3.0)
            plt.show()
            attach_widget(show_guidance, widgets.FloatSlider(value=3.0, min=0.0, max=20.0, step=0.5,
                                                             description="w", continuous_update=False))
        '''),
        md('''
        ## 6. Why large $w$ saturates, and Imagen's thresholds

        The guided $\\hat\\epsilon$ is an *extrapolation*: for $w > 1$ it is no longer a prediction the network was
        trained to make. The sampler turns it into $\\hat x_0 = (x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\hat\\epsilon)/\\sqrt{\\bar\\alpha_t}$,
        and early in sampling $\\sqrt{\\bar\\alpha_t}$ is small, so the extrapolation is amplified: $\\hat x_0$ lands far
        outside the data range $[-1, 1]$. The next $x_{t'}$ is built from that $\\hat x_0$, the network then sees inputs
        unlike anything in training, and the errors compound: over-saturated, over-contrasted images whose pixels the
        display has to clamp. Imagen (Saharia et al. 2022, §2.3) tames $\\hat x_0$ at every step:

        - **static thresholding**: clip $\\hat x_0$ to $[-1, 1]$ (`static_threshold`; diffusers' `clip_sample=True`).
          The values stay legal, but every pixel that "wanted" to be brighter than white becomes exactly white: the
          histogram grows spikes at $\\pm 1$, images get flat, saturated regions.
        - **dynamic thresholding**: per sample, take $s$ = the 99.5th percentile of $|\\hat x_0|$; if $s > 1$, clip to
          $[-s, s]$ and divide by $s$ (`dynamic_threshold`). An overshooting sample is shrunk *as a whole* back into
          range: no spikes, its relative contrasts kept, but also less contrast overall.

        The top row shows $\\hat x_0$ a fifth of the way into sampling (before any threshold), for $w = 1$ and for a large
        $w$, and what each threshold makes of the large-$w$ one. The bottom row shows the finished images' pixels
        *before* the display clamps them to $[-1, 1]$ (values beyond the axes are counted in the outermost bins).
        '''),
        code('''
            W_BIG = 15.0
            RECORD_STEP = 5     # of 25: early, when sqrt(abar_t) is still small
            final_w1, x0_w1 = sample(digits, 1.0, "ddim", 25, seed=SEED, record_at=RECORD_STEP)
            final_big, x0_big = sample(digits, W_BIG, "ddim", 25, seed=SEED, record_at=RECORD_STEP)
            final_static = sample(digits, W_BIG, "ddim", 25, seed=SEED, threshold=static_threshold)
            final_dynamic = sample(digits, W_BIG, "ddim", 25, seed=SEED, threshold=dynamic_threshold)

            t_record = int(make_scheduler("ddim", 25).timesteps[RECORD_STEP])
            rows = {f"x0_hat at step {RECORD_STEP} of 25 (t = {t_record})":
                        {"w = 1": x0_w1, f"w = {W_BIG:g}, no threshold": x0_big,
                         f"w = {W_BIG:g}, static": static_threshold(x0_big), f"w = {W_BIG:g}, dynamic": dynamic_threshold(x0_big)},
                    "finished image, before display clamping":
                        {"w = 1": final_w1, f"w = {W_BIG:g}, no threshold": final_big,
                         f"w = {W_BIG:g}, static": final_static, f"w = {W_BIG:g}, dynamic": final_dynamic}}
            fig, axes = plt.subplots(2, 4, figsize=(15, 5.6), sharex="row")
            for r, (row_title, panels) in enumerate(rows.items()):
                limit = 6.0 if r == 0 else 3.0
                for ax, (title, values) in zip(axes[r], panels.items()):
                    v = values.flatten().numpy()
                    ax.hist(np.clip(v, -limit, limit), bins=np.linspace(-limit, limit, 61), color="C0")
                    ax.axvspan(-1, 1, color="C2", alpha=0.15, label="data range [-1, 1]")
                    outside = (np.abs(v) > 1.05).mean()
                    ax.set_title(f"{title}: {100 * outside:.0f}% beyond ±1.05", fontsize=9)
                axes[r, 0].set_ylabel(row_title, fontsize=9)
            axes[0, 0].legend(fontsize=8)
            fig.tight_layout()
        '''),
        code('''
            thresholds = {"none": None, "static": static_threshold, "dynamic": dynamic_threshold}
            rows, names, scores = [], [], []
            for w in (3.0, 7.5, W_BIG):
                for name, fn in thresholds.items():
                    images = sample(digits, w, "ddim", 25, seed=SEED, threshold=fn)
                    rows.append(images[:10])
                    names.append(f"w={w:g}, {name}")
                    saturated = (images.abs() >= 0.99).float().mean()    # pixels at (or clamped to) black/white
                    scores.append(f"w={w:>4g} {name:<8} acc {referee_accuracy(images, digits):.2f}   "
                                  f"pixels at +-1: {100 * saturated:3.0f}%   pixel FD {pixel_fd(images):6.2f}")
            fig, ax = plt.subplots(figsize=(6.5, 6.2))
            grid_with_labels(ax, rows, names, title="the same noise: three guidance scales x three thresholds")
            print("\\n".join(scores))
        '''),
        md('''
        What to look for, on our digits:

        - **no threshold**: as $w$ grows, strokes get thicker and harsher; at $w = 15$ more than half of the finished
          pixels lie beyond $\\pm 1$ and are clamped flat by the display. Early $\\hat x_0$ values spread over $\\pm 6$
          and more.
        - **static**: the chain stays in range, and on these digits that already repairs a lot: the $w = 15$ row looks
          much like $w = 3$. The tell-tale sign is the pile-up at exactly $\\pm 1$.
        - **dynamic**: no pile-up, every sample shrunk as a whole, but our digits are almost *binary* (black background,
          white strokes, 64 pixels), so shrinking turns the black background grey and the pixel FD gets worse. On
          Imagen's natural photos few pixels sit at the extremes, the shrink costs little and avoids static's flat
          blown-out patches, which is why Imagen could push $w$ far beyond what was usable before. diffusers' version
          (`thresholding=True`) caps $s$ at `sample_max_value` to limit exactly this loss of contrast.

        The referee stays happy throughout: at these scales every digit is still recognisable. Guidance strength is not
        the problem; leaving the data range is.

        **Stable Diffusion uses neither.** Thresholding assumes a bounded data range, and SD's latents are not bounded
        by 1 (its scheduler config says `clip_sample: False`, and diffusers documents `thresholding` as unsuitable for
        latent-space models). SD stays at moderate scales (7.5) instead; rescaling the guided prediction's standard
        deviation (diffusers' `guidance_rescale`, Lin et al. 2023) plays a similar role in latent space.

        ## Summary

        | | DDPM | DDIM |
        |---|---|---|
        | reverse process | Markovian, posterior $q(x_{t-1} \\mid x_t, \\hat x_0)$ | non-Markovian, same marginals $q(x_t \\mid x_0)$ |
        | steps | all $T$ (1000) | any subsequence: 10–50 |
        | noise | $\\sigma_t^2 = \\tilde\\beta_t$ | $\\sigma_t(\\eta)$; $\\eta = 0$ deterministic |
        | retraining needed | — | none: same $\\epsilon_\\theta$ |

        Classifier-free guidance = condition dropout $p = 0.1$ in training + $\\epsilon_u + w(\\epsilon_c - \\epsilon_u)$ at
        sampling, at twice the cost per step. Large $w$ trades variety for fidelity and eventually leaves the data
        range; pixel-space models keep $\\hat x_0$ in range with static clipping or Imagen's dynamic thresholding.

        ## Check your understanding

        1. DDIM uses a network trained with DDPM's loss, unchanged. Which property of the DDIM forward process makes
           that legitimate, and which quantity in the training loss would have to change for it not to be?
        2. With $\\eta = 0$, what is random in DDIM sampling? Why does that make 10-step and 50-step samples from the
           same $x_T$ look alike, and why does that stop being true at $\\eta = 1$?
        3. DDPM with 1000 steps and DDIM with 25 steps: how many UNet evaluations does each need per image *with*
           classifier-free guidance? How would you implement guidance with a single evaluation per step on a batch?
        4. What would go wrong at sampling time if we trained with $p_{\\text{uncond}} = 0$? And with
           $p_{\\text{uncond}} = 0.9$?
        5. Write $\\hat\\epsilon$ for $w = 0$, $w = 1$ and $w = 2$ in terms of $\\epsilon_u$ and $\\epsilon_c$. Which one
           extrapolates, and why does extrapolation explain the histograms of section 6?
        6. Dynamic thresholding divides by $s \\ge 1$. Why is $s$ chosen per sample and not once for the whole batch?
           Why is the percentile 99.5% and not 100%?
        7. Why is neither threshold used by Stable Diffusion? (Hint: what range do its latents live in?)
        '''),
    ])


# ==========================================================================================================
# Lecture 5: CLIP
# ==========================================================================================================

def lecture_05():
    name = "05_clip.ipynb"
    return name, notebook([
        md(f'''
        # Lecture 5 — Text conditioning with CLIP

        {badge(name)}

        Stable Diffusion does not read your prompt; a **text encoder** does, and the UNet only sees the vectors it
        produces. That encoder comes from CLIP (Radford et al. 2021), a model trained to tell which caption belongs
        to which image. This lecture takes CLIP apart and trains a tiny one on the course's world of coloured shapes.

        **What you will learn**
        - what Stable Diffusion v1.x really feeds its UNet: CLIP ViT-L/14's text encoder, **77 tokens × 768
          numbers**, *all 77 token vectors* (the last hidden state), not one pooled sentence vector;
        - tokenisation: `<bos> … <eos>`, padding to a fixed length, truncation, and the attention mask;
        - contrastive pre-training: the logits matrix and CLIP's **symmetric cross-entropy** loss;
        - cosine similarity in a shared embedding space and **zero-shot classification** with prompts;
        - how a causal text encoder makes each token's vector depend on the words before it.

        **Prerequisites**: lecture 2 (attention, transformers), PyTorch basics. Lecture 4 is not needed.

        **Time**: `FAST=True` under a minute. The full lesson (training a tiny CLIP for 800 steps) takes about 3 minutes
        on a 2-core CPU (measured: 2¾ minutes on our 2-core test machine; twice that when the machine was shared),
        about a minute on a Colab GPU.
        '''),
        SETUP,
        params('''
            FAST = False            # True: tiny sizes that only check the plumbing (CI)
            SEED = 0
            THREADS = 1             # torch CPU threads; tiny models gain little from more, and lose a lot on a busy CPU
            NUM_TRAIN_IMAGES = 10000
            TRAIN_STEPS = 800
            BATCH_SIZE = 128
            IMAGE_SIZE = 32
            NUM_VAL_IMAGES = 1200
        '''),
        code('''
            if FAST:  # derived sizes: every section still runs, the numbers are not meant to be good
                NUM_TRAIN_IMAGES, TRAIN_STEPS, BATCH_SIZE, IMAGE_SIZE, NUM_VAL_IMAGES = 512, 40, 32, 16, 120
        '''),
        code('''
            import ipywidgets as widgets
            import matplotlib.pyplot as plt
            import numpy as np
            import torch
            import torch.nn.functional as F
            from IPython.display import display
            from matplotlib.offsetbox import AnnotationBbox, OffsetImage
            from tqdm.auto import tqdm

            from course_lib.data import COLOURS, POSITIONS, SHAPES, all_pairs, caption_for, shapes_batch
            from course_lib.minisd import HELD_OUT_PAIRS, training_captions
            from course_lib.sd import count_parameters, sd15_config, sd15_empty_model
            from course_lib.text import (CaptionTokenizer, CLIPConfig, TinyCLIP, contrastive_loss, cosine_similarity,
                                         zero_shot_classify)
            from course_lib.train import cosine_schedule_with_warmup
            from course_lib.viz import plot_losses, show_images, to_uint8

            torch.set_num_threads(THREADS)
            torch.manual_seed(SEED)
            plt.rcParams["figure.dpi"] = 80   # inline figures: readable, and small enough to keep in git
        ''', helper=True),
        md('''
        ## 1. What Stable Diffusion's UNet actually reads

        Stable Diffusion v1.x conditions on text with the **text tower of OpenAI's CLIP ViT-L/14** (frozen, never
        trained by SD). The facts, and two errors that circulate widely:

        | | SD v1.x text encoder (CLIP ViT-L/14) | CLIP ViT-B/32 text encoder |
        |---|---|---|
        | tokens per prompt | 77 (`<|startoftext|>`, ≤ 75 BPE tokens, `<|endoftext|>`, padding) | 77 |
        | width per token | **768** | 512 |
        | layers / heads | 12 / 12 | 12 / 8 |
        | parameters | 123 M | 63 M |

        - **Error 1: "SD's text embedding is 512-dimensional."** 512 is ViT-B/32's width, the model in many CLIP
          tutorials. SD v1's UNet has `cross_attention_dim = 768` because ViT-L/14's text encoder is 768 wide.
          (SD 2.x switched to OpenCLIP ViT-H/14: 1024.)
        - **Error 2: "the UNet is conditioned on the CLIP sentence embedding."** CLIP's *training* compares one pooled
          vector per caption (the `<eos>` token's features, projected). SD v1 does not use it: the UNet's
          cross-attention reads the encoder's **last hidden state, all 77 token vectors**, shape $(B, 77, 768)$, as keys
          and values. Every pixel can look at every word. (SDXL adds a pooled vector as an *extra* signal next to the
          per-token ones; it never replaces them.)

        We can check both without downloading a byte: `course_lib.sd` builds the real architectures on PyTorch's
        **meta device** (real shapes, no storage) from the real config files.
        '''),
        code('''
            from transformers import CLIPTextConfig, CLIPTextModel

            sd_text_encoder = sd15_empty_model("text_encoder")                # CLIP ViT-L/14 text tower, on "meta"
            with torch.device("meta"):
                b32_text_encoder = CLIPTextModel(CLIPTextConfig())            # transformers' defaults = ViT-B/32's text tower

            prompt_ids = torch.zeros(1, 77, dtype=torch.long, device="meta")  # one prompt, padded to 77 tokens
            for name, encoder in (("SD v1.x = CLIP ViT-L/14", sd_text_encoder), ("CLIP ViT-B/32", b32_text_encoder)):
                out = encoder(input_ids=prompt_ids)
                print(f"{name:<24} {count_parameters(encoder) / 1e6:6.1f} M parameters   "
                      f"last_hidden_state {tuple(out.last_hidden_state.shape)}   pooler_output {tuple(out.pooler_output.shape)}")
            print(f"SD v1.5 UNet cross_attention_dim = {sd15_config('unet')['cross_attention_dim']}, "
                  f"tokenizer model_max_length = {sd15_config('tokenizer')['model_max_length']}")
        '''),
        md('''
        In diffusers' `StableDiffusionPipeline` the prompt goes through exactly these lines (simplified):

        ```python
        ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        prompt_embeds = text_encoder(ids)[0]          # last_hidden_state: (B, 77, 768), NOT pooler_output
        noise_pred = unet(latents, t, encoder_hidden_states=prompt_embeds).sample
        ```

        Two details worth knowing: SD v1's tokenizer pads with `<|endoftext|>` itself (it has no separate pad token),
        and SD v1 passes **no** attention mask, neither to the text encoder nor to the UNet, so cross-attention also
        reads the vectors at the padding positions. Because CLIP's text encoder is causal, those vectors come *after*
        the prompt and summarise it. Our miniature pipeline (lecture 6) masks padding instead; both work as long as
        training and sampling agree.

        ## 2. Tokenisation, padding, truncation, attention mask

        CLIP uses byte-pair encoding with 49,408 tokens. Our captions come from a tiny grammar (`a [size] colour shape
        [at the position]`), so a word-level tokenizer with CLIP's conventions is enough (`course_lib.text.CaptionTokenizer`):
        `<bos>` first, `<eos>` after the last word, `<pad>` up to a fixed length $L$ (CLIP: 77; ours: 16), and an
        **attention mask** that is 1 on real tokens and 0 on padding. Truncation cuts words, never `<eos>`.
        '''),
        code('''
            tokenizer = CaptionTokenizer.from_texts(training_captions(), max_length=16)
            print(tokenizer, "\\nvocabulary:", tokenizer.vocab)

            examples = ["a red circle", "a small blue square at the top left", "a purple circle",
                        "a large yellow triangle in the center"]
            batch = tokenizer(examples)                                        # padding="max_length" (CLIP's way)
            for text, ids, mask in zip(examples, batch["input_ids"], batch["attention_mask"]):
                print(f"{text!r:42} ids {ids.tolist()}\\n{'':42} mask {mask.tolist()}")
            print("\\npadding='longest' -> shape", tuple(tokenizer(examples, padding="longest")["input_ids"].shape),
                  "| truncation to max_length=5:", tokenizer.batch_decode(tokenizer(examples, max_length=5)["input_ids"],
                                                                          skip_special_tokens=False)[1])
        '''),
        code('''
            tokens = [[tokenizer.vocab[i] for i in row] for row in batch["input_ids"].tolist()]
            fig, ax = plt.subplots(figsize=(11, 2.6))
            ax.imshow(batch["attention_mask"], cmap="Greens", vmin=0, vmax=2.5, aspect="auto")
            for r, row in enumerate(tokens):
                for c, token in enumerate(row):
                    ax.text(c, r, token, ha="center", va="center", fontsize=7,
                            color="black" if batch["attention_mask"][r, c] else "grey")
            ax.set_yticks(range(len(examples)), examples, fontsize=8)
            ax.set_xticks(range(tokenizer.max_length))
            ax.set_xlabel("position (green: attention_mask = 1, white: padding)")
            ax.set_title("tokens padded to max_length = 16 ('purple' is not in the vocabulary: <unk>)");
        '''),
        md('''
        CLIP's text transformer is **causal**: token $i$ attends only to tokens $0..i$ (and, with the mask, never to
        padding). Two consequences you can verify: the features of real tokens do not depend on how much padding
        follows, and the `<eos>` token, the last real one, is the only position that has seen the whole caption, so
        CLIP reads its sentence vector there (`pooled`).
        '''),
        md('''
        ## 3. The captioned shapes world

        One coloured shape on black, with a caption that names colour and shape and, half of the time, size and position.
        Two colour-shape pairs (green triangle, yellow circle) are **held out**: no training image shows them, so we can
        later test whether the model *composes* "green" and "triangle" on its own.
        '''),
        code('''
            print("held out:", HELD_OUT_PAIRS)
            train = shapes_batch(NUM_TRAIN_IMAGES, seed=SEED, image_size=IMAGE_SIZE, exclude_pairs=HELD_OUT_PAIRS,
                                 caption_style="mixed")
            val = shapes_batch(NUM_VAL_IMAGES, seed=SEED + 10_000, image_size=IMAGE_SIZE, caption_style="full")  # every pair
            fig = show_images(train["image"][:16], titles=train["caption"][:16], ncols=8, figsize=(13, 4.4))
        '''),
        md('''
        ## 4. Contrastive pre-training

        A batch holds $B$ images and their $B$ captions. Two encoders map them into one space of dimension $D$, and both
        embeddings are L2-normalised, so a dot product is a **cosine similarity** in $[-1, 1]$:

        $$I_e = \\frac{W_i f_{\\text{img}}(x)}{\\|W_i f_{\\text{img}}(x)\\|},\\quad T_e = \\frac{W_t f_{\\text{txt}}(y)}{\\|W_t f_{\\text{txt}}(y)\\|},\\qquad
        \\text{logits} = e^{\\tau}\\, I_e T_e^{\\top} \\in \\mathbb R^{B \\times B}.$$

        Row $i$ of the logits matrix scores image $i$ against every caption; the right one is on the diagonal. The loss
        is a cross-entropy in both directions: each image must pick its caption among $B$, and each caption its image:

        $$\\mathcal L = \\tfrac12\\Big[\\underbrace{\\mathrm{CE}(\\text{logits}, [0..B{-}1])}_{\\text{images} \\to \\text{texts (rows)}} +
        \\underbrace{\\mathrm{CE}(\\text{logits}^{\\top}, [0..B{-}1])}_{\\text{texts} \\to \\text{images (columns)}}\\Big].$$

        $\\tau$ is a learned log-temperature (initialised so that $e^{\\tau} = 1/0.07 \\approx 14.3$, capped at 100). At
        initialisation the embeddings carry no information about which caption goes with which image, so the loss
        starts near $\\log B$ (chance: the right partner is one of $B$), a little above it when the random
        similarities happen to be spread out.

        Our TinyCLIP: a causal transformer over tokens (2 layers, width 64) and a small CNN over pixels.
        '''),
        code('''
            config = (CLIPConfig.tiny(vocab_size=tokenizer.vocab_size, image_size=IMAGE_SIZE) if FAST else
                      CLIPConfig.small(vocab_size=tokenizer.vocab_size, image_size=IMAGE_SIZE, width=64, layers=2,
                                       embed_dim=64, image_widths=(16, 32, 64)))
            torch.manual_seed(SEED)
            clip = TinyCLIP(config)
            print(f"text encoder {count_parameters(clip.text_encoder):,} + image encoder "
                  f"{count_parameters(clip.image_encoder):,} + projections = {count_parameters(clip):,} parameters")

            train_tokens = tokenizer(train["caption"], max_length=config.max_length)

            # one batch, the loss written out by hand, checked against course_lib's contrastive_loss
            idx = torch.arange(8)
            with torch.no_grad():
                I_e = clip.encode_image(train["image"][idx])                                   # (B, D), unit length
                T_e = clip.encode_text(train_tokens["input_ids"][idx], train_tokens["attention_mask"][idx])
                logits = clip.logit_scale.exp() * I_e @ T_e.T                                  # (B images, B texts)
                labels = torch.arange(len(idx))
                by_hand = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
                library = contrastive_loss(I_e, T_e, clip.logit_scale)
            print(f"loss by hand {by_hand:.4f}, contrastive_loss {library:.4f}, log(B) = {np.log(len(idx)):.4f}")
            logits_before = logits
        '''),
        code('''
            optimizer = torch.optim.AdamW(clip.parameters(), lr=2e-3, weight_decay=0.01)
            lr_schedule = cosine_schedule_with_warmup(optimizer, warmup_steps=max(1, TRAIN_STEPS // 20),
                                                      total_steps=TRAIN_STEPS)
            generator = torch.Generator().manual_seed(SEED)
            losses, temperatures = [], []
            clip.train()
            for step in tqdm(range(TRAIN_STEPS), desc="CLIP"):
                idx = torch.randint(0, NUM_TRAIN_IMAGES, (BATCH_SIZE,), generator=generator)
                image_embeds = clip.encode_image(train["image"][idx])                                      # (B, D)
                text_embeds = clip.encode_text(train_tokens["input_ids"][idx], train_tokens["attention_mask"][idx])
                loss = contrastive_loss(image_embeds, text_embeds, clip.logit_scale)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                lr_schedule.step()
                losses.append(loss.item())
                temperatures.append(clip.logit_scale.exp().item())
            clip.eval()

            fig, axes = plt.subplots(1, 2, figsize=(11, 3.3))
            plot_losses(losses, ax=axes[0], log_y=False, title="symmetric contrastive loss")
            axes[0].axhline(np.log(BATCH_SIZE), color="grey", linestyle=":", label="log B (chance)")
            axes[0].legend()
            axes[1].plot(temperatures)
            axes[1].set_title("learned logit scale exp(tau)")
            axes[1].set_xlabel("step")
            fig.tight_layout()
        '''),
        md('''
        The loss does not go to zero, and should not: a batch of 128 captions from a small grammar contains
        duplicates ("a red circle" may describe five different images). Those pairs are **false negatives**: the loss
        asks the model to tell apart images that their captions do not distinguish. Real CLIP has the same problem at a
        smaller rate (400 M web captions are rarely identical).

        ## 5. The logits matrix, before and after

        Eight images with eight different captions. Rows are captions, columns are images; a trained CLIP puts its
        mass on the diagonal. Before training, each row is nearly constant: the score depends on the caption, hardly on
        the image. The right-hand panel is the cosine-similarity matrix between the same captions and images: the logits
        before the temperature $e^{\\tau}$ multiplies them. Off the diagonal, look at which mismatches score high: those
        that share a colour, a shape or a position with the caption.
        '''),
        code('''
            def plot_similarity(ax, matrix, images, captions, title, fmt="{:.2f}", show_captions=True):
                """Heat map: rows = captions, columns = images (drawn as thumbnails under the columns)."""
                matrix = matrix.detach().numpy()
                im = ax.imshow(matrix, cmap="viridis")
                ax.set_yticks(range(len(captions)), captions if show_captions else [""] * len(captions), fontsize=8)
                ax.set_xticks(range(len(images)), [""] * len(images))
                zoom = 20 / images.shape[-1]
                for j, pixels in enumerate(to_uint8(images)):
                    ax.add_artist(AnnotationBbox(OffsetImage(pixels, zoom=zoom), (j, len(captions) - 0.5),
                                                 xybox=(0, -14), boxcoords="offset points", frameon=False,
                                                 annotation_clip=False))
                for (r, c), v in np.ndenumerate(matrix):
                    ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=6,
                            color="white" if v < matrix.mean() else "black")
                ax.set_title(title, fontsize=10)
                plt.colorbar(im, ax=ax, fraction=0.046)


            # eight validation images with eight distinct captions
            chosen, seen = [], set()
            for i, caption in enumerate(val["caption"]):
                key = (int(val["colour"][i]), int(val["shape"][i]))
                if key not in seen:
                    seen.add(key)
                    chosen.append(i)
                if len(chosen) == 8:
                    break
            chosen = torch.tensor(chosen)
            images, captions = val["image"][chosen], [val["caption"][i] for i in chosen]
            ids = tokenizer(captions, max_length=config.max_length)
            with torch.no_grad():
                out = clip(ids["input_ids"], images, ids["attention_mask"])
                similarity = cosine_similarity(out.text_embeds, out.image_embeds)     # (texts, images)

            fig, axes = plt.subplots(1, 3, figsize=(20, 5.2), gridspec_kw={"width_ratios": [1, 1, 0.8]},
                                     layout="constrained")
            plot_similarity(axes[0], logits_before.T[:8, :8], train["image"][:8], train["caption"][:8],
                            "logits before training (a training batch)", "{:.1f}")
            plot_similarity(axes[1], out.logits_per_text, images, captions, "logits after training", "{:.0f}")
            plot_similarity(axes[2], similarity, images, captions, "cosine similarity after training (same rows)",
                            show_captions=False)
        '''),
        md('''
        ## 6. Zero-shot classification

        CLIP was never trained as a classifier, yet it is one: write one prompt per class, embed the prompts, and give
        each image the class whose prompt embedding is most similar (`zero_shot_classify`). No labels, no training:
        the "classifier weights" are text embeddings. We use the 12 prompts "a {colour} {shape}" on validation images
        that include the two **held-out** pairs, whose captions the model never saw with a matching image.
        '''),
        code('''
            pairs = all_pairs()
            class_prompts = [caption_for(c, s) for c, s in pairs]
            predicted, probs = zero_shot_classify(clip, tokenizer, val["image"], class_prompts)
            truth = torch.tensor([pairs.index((COLOURS[c], SHAPES[s])) for c, s in zip(val["colour"], val["shape"])])
            held = torch.tensor([pairs[k] in HELD_OUT_PAIRS for k in truth.tolist()])
            correct = predicted == truth
            print(f"zero-shot accuracy over 12 prompts: all {correct.float().mean():.3f}   "
                  f"seen pairs {correct[~held].float().mean():.3f}   held-out pairs {correct[held].float().mean():.3f}"
                  f"   (chance {1 / 12:.3f})")

            confusion = torch.zeros(12, 12)
            for t, p in zip(truth, predicted):
                confusion[t, p] += 1
            confusion = confusion / confusion.sum(dim=1, keepdim=True).clamp(min=1)
            fig, ax = plt.subplots(figsize=(6.5, 5.5))
            im = ax.imshow(confusion, cmap="Blues", vmin=0, vmax=1)
            labels = [f"{c} {s}" + (" *" if (c, s) in HELD_OUT_PAIRS else "") for c, s in pairs]
            ax.set_xticks(range(12), labels, rotation=60, ha="right", fontsize=8)
            ax.set_yticks(range(12), labels, fontsize=8)
            ax.set_xlabel("predicted prompt")
            ax.set_ylabel("true pair (* = held out in training)")
            ax.set_title("zero-shot confusion matrix (rows sum to 1)")
            plt.colorbar(im, ax=ax, fraction=0.046);
        '''),
        md('''
        **Marginalising.** The zero-shot classifier gives a probability to each of the 12 pairs. Summing over the colours
        gives a shape classifier, summing over the shapes a colour classifier. The same trick reads off **position**,
        which only half of the training captions mention: 60 prompts "a {colour} {shape} at the {position}", summed
        over the 12 pairs. (CLIP's paper also *averages* the text embeddings of several phrasings of one class, "a photo
        of a {}", "a drawing of a {}": prompt ensembling, for classes with many ways to say them.)
        '''),
        code('''
            joint = probs.reshape(-1, len(COLOURS), len(SHAPES))            # all_pairs() is colour-major
            shape_pred, colour_pred = joint.sum(dim=1).argmax(dim=1), joint.sum(dim=2).argmax(dim=1)
            placed = [(c, s, p) for c, s in pairs for p in POSITIONS]
            _, probs60 = zero_shot_classify(clip, tokenizer, val["image"], [caption_for(c, s, None, p) for c, s, p in placed])
            position_pred = probs60.reshape(-1, len(pairs), len(POSITIONS)).sum(dim=1).argmax(dim=1)
            print(f"shape    accuracy {(shape_pred == val['shape']).float().mean():.3f}  (chance {1 / 3:.2f})")
            print(f"colour   accuracy {(colour_pred == val['colour']).float().mean():.3f}  (chance {1 / 4:.2f})")
            print(f"position accuracy {(position_pred == val['position']).float().mean():.3f}  (chance {1 / 5:.2f})")
        '''),
        md('''
        Type your own caption: the text box below ranks the validation images by cosine similarity to it
        (a tiny text-to-image *search engine*, which is what CLIP was first used for).
        '''),
        code('''
            val_embeds = clip.encode_image(val["image"]).detach()


            def search(query):
                t = tokenizer([query], max_length=config.max_length)
                with torch.no_grad():
                    q = clip.encode_text(t["input_ids"], t["attention_mask"])
                scores = (val_embeds @ q.T).squeeze(1)
                best = scores.topk(8).indices
                fig = show_images(val["image"][best], titles=[f"{scores[i]:.2f}" for i in best], ncols=8,
                                  figsize=(10, 1.8))
                fig.suptitle(f"best matches for {query!r} (cosine similarity)", y=1.1)
                return fig


            search("a large green triangle at the bottom right")   # green triangles were never in training
            plt.show()
            attach_widget(search, widgets.Text(value="a large green triangle at the bottom right",
                                               description="caption", continuous_update=False,
                                               layout=widgets.Layout(width="60%")))
        '''),
        md('''
        ## 7. What the UNet will get: one vector per token

        For Stable Diffusion we keep only the **text encoder** and take its `last_hidden_state`: $(B, L, \\text{width})$.
        Because the encoder is causal, the vector at position $i$ depends on tokens $0..i$ only. Compare two captions
        that differ in one word: positions before the difference have *identical* vectors; from the difference on they
        diverge, and "circle" in "a red circle" is not the same vector as "circle" in "a blue circle": each token
        vector carries its context. Padding after `<eos>` is masked out here; it could not change anything before it.
        '''),
        code('''
            pair_texts = ["a small red circle at the top left", "a small blue circle at the top left"]
            t = tokenizer(pair_texts, max_length=config.max_length)
            with torch.no_grad():
                hidden = clip.text_encoder(t["input_ids"], t["attention_mask"]).last_hidden_state   # (2, L, width)
                longest = tokenizer(pair_texts, padding="longest")
                hidden_short = clip.text_encoder(longest["input_ids"], longest["attention_mask"]).last_hidden_state
            n_real = int(t["attention_mask"][0].sum())
            # distance between the two captions' vectors at each position, relative to the vectors' size
            per_position = (hidden[0, :n_real] - hidden[1, :n_real]).norm(dim=-1) / hidden[0, :n_real].norm(dim=-1)
            print("last_hidden_state shape:", tuple(hidden.shape), "-> the UNet's encoder_hidden_states")
            print(f"real-token features identical whether padded to {t['input_ids'].shape[1]} or to "
                  f"{longest['input_ids'].shape[1]} positions:", torch.allclose(hidden[:, :n_real], hidden_short[:, :n_real], atol=1e-5))

            fig, ax = plt.subplots(figsize=(8, 2.8))
            words = [tokenizer.vocab[i] for i in t["input_ids"][0, :n_real].tolist()]
            ax.bar(range(n_real), per_position.numpy(), color=["C0" if v < 1e-5 else "C1" for v in per_position])
            ax.set_xticks(range(n_real), [f"{w}\\n{tokenizer.vocab[j]}" if w != tokenizer.vocab[j] else w
                                          for w, j in zip(words, t["input_ids"][1, :n_real].tolist())])
            ax.set_ylabel("||h_1 - h_2|| / ||h_1||")
            ax.set_title("per-token vectors of the two captions: identical (0) before 'red'/'blue', different from there on");
        '''),
        md('''
        ## Summary

        - SD v1.x: prompt → CLIP BPE tokenizer (77 tokens, padded with `<|endoftext|>`, truncated) → CLIP ViT-L/14 text
          encoder → `last_hidden_state` $(B, 77, 768)$ → keys and values of every cross-attention layer in the UNet. The
          pooled/projected vector CLIP trains with is not used by SD v1.
        - CLIP learns a shared space with a symmetric cross-entropy over the $B \\times B$ logits matrix
          $e^{\\tau} I_e T_e^{\\top}$; the diagonal holds the true pairs.
        - Zero-shot classification = nearest class prompt in that space; summing its probabilities over the other
          attributes reads off one attribute at a time (shape, colour, position).
        - A causal text encoder makes each token's vector depend on the words before it, and makes padding harmless.

        ## Check your understanding

        1. A blog post says "Stable Diffusion v1 conditions on the 512-dimensional CLIP embedding of the prompt."
           Name the two mistakes, and give the correct shape of what the UNet receives.
        2. Why is the contrastive loss about $\\log B$ at initialisation? What does a loss of $\\log 2$ with $B = 128$
           tell you?
        3. The loss is the mean of two cross-entropies. What would the model be free to do if you kept only the
           image-to-text term?
        4. Two captions in a batch are both "a red circle". What does the loss ask of the model for that pair of rows,
           and why is that a problem? Suggest a fix.
        5. Why is a *causal* text encoder's pooled vector read at `<eos>` and not at `<bos>`? What changes in the
           per-token vectors of "a red circle" if you append "at the top left"?
        6. Your prompt for SD has 90 BPE tokens. What happens to the last words, and why?
        7. How did zero-shot accuracy on the held-out pairs compare with the seen pairs? What does that say about
           what the embedding space has learned?
        '''),
    ])


# ==========================================================================================================
# Lecture 6: Stable Diffusion in miniature
# ==========================================================================================================

def lecture_06():
    name = "06_mini_stable_diffusion.ipynb"
    return name, notebook([
        md(f"""
        # Lecture 6 — Stable Diffusion in miniature

        {badge(name)}

        Time to put lectures 1–5 together. We train, on a CPU and from scratch, a text-to-image model with Stable
        Diffusion's exact recipe: a VAE that compresses images into latents, a CLIP text encoder that turns prompts
        into token vectors, and a UNet that denoises latents while cross-attending to those vectors. Then we use it
        the ways people use SD: text-to-image, image-to-image, inpainting, and we look inside its cross-attention.

        **What you will learn**
        - the parts of SD's UNet and what each costs: time embedding, ResBlocks, self-attention, cross-attention,
          GEGLU feed-forward, skip connections, with parameter counts next to the real SD v1.5;
        - the training recipe (the seeds' *Algorithm 1* on latents): frozen VAE and text encoder, random timestep,
          noise prediction, the caption dropped 10% of the time for classifier-free guidance;
        - sampling (*Algorithm 2*) with DDIM and classifier-free guidance, as a loop you can read;
        - img2img (SDEdit) and its `strength`, inpainting, per-token cross-attention maps;
        - how to judge a text-to-image model: prompt accuracy from an independent classifier, on colour-shape pairs
          the model has **never** seen together.

        **Prerequisites**: lectures 1 (VAE), 2 (attention), 3 (DDPM), 4 (DDIM, classifier-free guidance), 5 (CLIP).

        **Time**: `FAST=True` under a minute (the pictures are noise: it only checks the plumbing). The full lesson
        trains three networks: about 10 minutes on a 2-core CPU (measured: 9 minutes on our 2-core test machine, 7 of
        them for the UNet; three times that when the machine was shared), 3–4 minutes on a Colab GPU. The training
        cells save their results and resume where they stopped if you interrupt them. `BUDGET = "library"` uses `course_lib.minisd`'s
        own, longer defaults for better pictures.
        """),
        SETUP,
        params("""
            FAST = False            # True: tiny sizes that only check the plumbing (CI)
            BUDGET = "lesson"       # "lesson": about 10 CPU minutes; "library": MiniSDConfig() defaults (much longer)
            SEED = 0
            THREADS = 1             # torch CPU threads; small models gain little from more, and lose a lot on a busy CPU
            NUM_INFERENCE_STEPS = 25
            GUIDANCE_SCALE = 3.0
            SEEDS_PER_PROMPT = 8    # images per prompt when we measure prompt accuracy
        """),
        code("""
            import json
            import shutil
            import time
            from pathlib import Path

            import ipywidgets as widgets
            import matplotlib.pyplot as plt
            import numpy as np
            import torch
            import torch.nn.functional as F
            from IPython.display import display
            from tqdm.auto import tqdm

            from course_lib.data import COLOURS, SHAPES, shapes_batch
            from course_lib.guidance import cfg_combine, sample_keep_mask
            from course_lib.metrics import feature_frechet_distance, per_prompt_accuracy, prompt_accuracy, train_evaluator
            from course_lib.minisd import (MiniSDConfig, build_pipeline, prompt_set, train_clip, train_unet,
                                           train_vae)
            from course_lib.schedulers import DDPMScheduler
            from course_lib.sd import count_parameters, sd15_config, sd15_empty_model
            from course_lib.unet import UNet, UNetConfig, average_cross_attention
            from course_lib.viz import image_grid, plot_attention_maps, plot_losses, plot_trajectory, show_images

            torch.set_num_threads(THREADS)
            torch.manual_seed(SEED)
            plt.rcParams["figure.dpi"] = 80   # inline figures: readable, and small enough to keep in git
        """, helper=True),
        code("""
            if FAST:
                config = MiniSDConfig.fast(seed=SEED, vae_batch_size=16, num_inference_steps=5,
                                           text_features="last_hidden_state")
                NUM_INFERENCE_STEPS, SEEDS_PER_PROMPT = 5, 2
            elif BUDGET == "library":
                config = MiniSDConfig(seed=SEED)
            else:  # the lesson: the library's recipe with smaller budgets and a UNet that has 8x8 attention maps
                config = MiniSDConfig(seed=SEED, num_train_images=8000, vae_steps=400, vae_batch_size=32, clip_steps=400,
                                      unet=UNetConfig(block_channels=(32, 64), attention_levels=(0, 1), num_heads=2,
                                                      context_dim=64, norm_groups=8),
                                      unet_steps=2000, unet_batch_size=64,
                                      text_features="last_hidden_state")   # SD v1.5's choice: section 7 shows its cost

            # Every stage saves its result under OUT_DIR and is skipped when it finds it there: re-running the
            # notebook (or resuming an interrupted cell) does not retrain. A run with other settings starts afresh.
            OUT_DIR = Path("outputs") / ("lecture06-fast" if FAST else f"lecture06-{BUDGET}")
            saved = OUT_DIR / "config.json"
            if saved.is_file() and json.loads(saved.read_text()) != json.loads(json.dumps(config.to_dict())):
                shutil.rmtree(OUT_DIR)
            OUT_DIR.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(config.to_dict(), indent=1))
            print(f"outputs in {OUT_DIR}; VAE {config.vae_steps} steps, CLIP {config.clip_steps} steps, "
                  f"UNet {config.unet_steps} steps x {config.unet_batch_size} latents")
        """),
        md("""
        ## 1. The map

        ```
        prompt ──► tokenizer ──► text encoder τ (frozen) ──► c: (B, L, D) token vectors ─────────────┐ cross-attention
                                                                                                      ▼
        z_T ~ N(0, I) ──► [ UNet ε_θ(z_t, t, c) ──► DDIM step + guidance ] × 25 ──► z_0 ──► VAE decoder D ──► image
        image ──► VAE encoder E (frozen) ──► z_0 = s·E(x)        (training, img2img, inpainting)
        ```

        Everything in the figure exists in real Stable Diffusion v1.5, at a much larger scale:
        """),
        code("""
            sd_unet = sd15_config("unet")
            ours = {
                "image": f"3 x {config.image_size} x {config.image_size}",
                "latent z": f"{config.vae.latent_channels} x {config.image_size // config.vae.downsample_factor} x "
                            f"{config.image_size // config.vae.downsample_factor}  (f = {config.vae.downsample_factor})",
                "text c = last_hidden_state": f"{config.clip.max_length} tokens x {config.clip.width}",
                "UNet widths per level": str(tuple(config.unet.block_channels)),
                "UNet attention heads": str(config.unet.num_heads),
                "sampler": f"DDIM, {NUM_INFERENCE_STEPS} steps, guidance {GUIDANCE_SCALE}",
            }
            real = {
                "image": "3 x 512 x 512",
                "latent z": "4 x 64 x 64  (f = 8)",
                "text c = last_hidden_state": f"77 tokens x {sd_unet['cross_attention_dim']} (CLIP ViT-L/14)",
                "UNet widths per level": str(tuple(sd_unet["block_out_channels"])),
                "UNet attention heads": str(sd_unet["attention_head_dim"]),
                "sampler": "PNDM/DDIM, 50 steps, guidance 7.5",
            }
            print(f"{'':28}{'ours':38}SD v1.5")
            for key in ours:
                print(f"{key:28}{ours[key]:38}{real[key]}")
        """),
        md("""
        ## 2. Inside the UNet

        The denoiser $\\epsilon_\\theta(z_t, t, c)$ is a UNet (`course_lib.unet.UNet`, the layout and parameter names of
        diffusers' `UNet2DConditionModel`):

        - **time embedding**: $t \\mapsto$ sinusoids $\\mapsto$ MLP; every ResBlock adds a projection of it to its feature
          map, so each layer knows how noisy its input is;
        - **ResBlocks**: GroupNorm → SiLU → 3×3 conv (+ time) → GroupNorm → SiLU → conv, plus a residual;
        - **SpatialTransformer** at the chosen resolutions: pixels become tokens $(B, C, H, W) \\to (B, HW, C)$, then
          *self-attention* (pixels look at pixels), *cross-attention* (pixels are queries, the $L$ text token vectors
          are keys and values: $\\mathrm{softmax}(QK^\\top/\\sqrt d)V$ with $K = cW_K$, $V = cW_V$), and a *GEGLU*
          feed-forward $W_2\\,(a \\odot \\mathrm{GELU}(g))$ with $[a, g] = W_1 x$; each with a LayerNorm and a residual;
        - **down path / up path with skips**: every down-path output is concatenated onto the matching up-path input,
          so fine detail does not have to squeeze through the lowest resolution.

        Parameter counts per part, ours against the real SD v1.5 UNet (built on PyTorch's meta device: no weights):
        """),
        code("""
            PARTS = [("time embedding", ("time_embedding",)), ("self-attention (attn1)", (".attn1.",)),
                     ("cross-attention (attn2)", (".attn2.",)), ("GEGLU feed-forward", (".ff.",)),
                     ("transformer norms + proj_in/out", ("attentions",)), ("ResBlocks", ("resnets",)),
                     ("down/up-sampling convs", ("downsample", "upsample")),
                     ("conv_in / conv_out", ("conv_in", "conv_out", "conv_norm_out"))]


            def parameters_per_part(model):
                counts = {part: 0 for part, _ in PARTS}
                for name, p in model.named_parameters():
                    part = next(part for part, keys in PARTS if any(k in name for k in keys))
                    counts[part] += p.numel()
                return counts


            unet_preview = UNet(UNetConfig(**{**config.unet.to_dict(), "context_dim": config.clip.width,
                                              "in_channels": config.vae.latent_channels,
                                              "out_channels": config.vae.latent_channels}))
            real_unet = sd15_empty_model("unet")
            mine, theirs = parameters_per_part(unet_preview), parameters_per_part(real_unet)
            print(f"{'part':34}{'ours':>12}{'':8}{'SD v1.5':>14}")
            for part, _ in PARTS:
                print(f"{part:34}{mine[part]:>12,} {100 * mine[part] / sum(mine.values()):5.1f}%"
                      f"{theirs[part]:>14,} {100 * theirs[part] / sum(theirs.values()):5.1f}%")
            print(f"{'total':34}{sum(mine.values()):>12,}{'':8}{sum(theirs.values()):>14,}")
        """),
        md("""
        Follow one forward pass: the trace lists every block with its input and output shape. Watch the channels of
        the up-path ResBlocks: they are the sum of the path's own channels and the skip concatenated onto it.
        """),
        code("""
            trace = []
            hooks = [module.register_forward_hook(
                         lambda m, inputs, output, name=name: trace.append((name, type(m).__name__,
                                                                            tuple(inputs[0].shape), tuple(output.shape))))
                     for name, module in unet_preview.named_modules()
                     if type(module).__name__ in ("ResBlock", "SpatialTransformer", "Upsample")
                     or name in ("conv_in", "conv_out") or name.endswith("downsample")]
            latent_size = config.image_size // config.vae.downsample_factor
            with torch.no_grad():
                unet_preview(torch.randn(1, config.vae.latent_channels, latent_size, latent_size), 500,
                             torch.randn(1, config.clip.max_length, config.clip.width))
            for h in hooks:
                h.remove()
            for name, kind, shape_in, shape_out in trace:
                print(f"{name:32}{kind:20}{str(shape_in):20} -> {shape_out}")
            block = next(m for m in unet_preview.modules() if type(m).__name__ == "SpatialTransformer")
            print("\\none SpatialTransformer:\\n", block)
        """),
        md("""
        ## 3. Stage 1: the VAE (lecture 1), then frozen

        Training data: rendered shapes with captions, without the two held-out colour-shape pairs. The VAE learns
        $x \\in [-1,1]^{3\\times32\\times32} \\to z \\in \\mathbb R^{4\\times8\\times8}$ (12x fewer numbers). Afterwards we measure
        the spread of the latents and pick the scale factor $s = 1/\\mathrm{std}(z)$ so that the diffusion model sees
        unit-variance inputs (SD v1's $s = 0.18215$ was found the same way).
        """),
        code("""
            data = shapes_batch(config.num_train_images, seed=config.seed, image_size=config.image_size,
                                exclude_pairs=config.held_out_pairs, caption_style="mixed")
            vae, vae_report = train_vae(config, OUT_DIR, data)     # skipped (loaded) if OUT_DIR already holds it
            print(f"VAE: {vae_report['parameters']:,} parameters, held-out PSNR {vae_report['val_psnr_db']:.1f} dB, "
                  f"scale factor s = {vae_report['scale_factor']:.3f}  (trained in {vae_report['seconds']:.0f} s)")
            scale_factor = vae_report["scale_factor"]

            with torch.no_grad():
                x = data["image"][:8]
                z = vae.encode(x).mode()
                x_rec = vae.decode(z).clamp(-1, 1)
            fig, axes = plt.subplots(1, 3, figsize=(15, 2.6), gridspec_kw={"width_ratios": [4, 4, 1.2]})
            axes[0].imshow(image_grid(torch.cat([x, x_rec]), nrow=8))
            axes[0].set_title("top: input, bottom: VAE reconstruction")
            axes[1].imshow(image_grid(z.transpose(0, 1).flatten(0, 1)[:, None] * scale_factor / 3, nrow=8))
            axes[1].set_title("latents s * z: one row per channel (4 x 8 x 8 per image)")
            axes[2].hist((z * scale_factor).flatten().numpy(), bins=50)
            axes[2].set_title("s * z")
            for ax in axes[:2]:
                ax.set_axis_off()
            fig.tight_layout()
        """),
        md("""
        ## 4. Stage 2: the text encoder (lecture 5), then frozen

        The tiny CLIP learns to match images and captions; we keep its **text encoder** and, for every caption, all
        of its token vectors $\\tau(y) \\in \\mathbb R^{L \\times D}$. The empty caption "" is the "no condition" input of
        classifier-free guidance: it is just another prompt, `<bos> <eos>`.
        """),
        code("""
            clip, tokenizer, clip_report = train_clip(config, OUT_DIR, data)
            text_encoder = clip.text_encoder
            print(f"CLIP: {clip_report['parameters']:,} parameters, zero-shot accuracy over 12 prompts "
                  f"{clip_report['zero_shot_accuracy']:.3f}  (trained in {clip_report['seconds']:.0f} s)")
            example = tokenizer(["a small red circle at the top left", ""], max_length=config.clip.max_length)
            with torch.no_grad():
                c = text_encoder(example["input_ids"], example["attention_mask"]).last_hidden_state
            print("tau(y) for a prompt and for the empty prompt:", tuple(c.shape), "+ mask", example["attention_mask"].tolist())
        """),
        md("""
        ## 5. Stage 3: the UNet — Algorithm 1 on latents

        Each training step, for a batch of (image, caption) pairs:

        1. $z_0 = s \\cdot E(x)$, a sample of the frozen VAE's posterior (no gradient into the VAE);
        2. with probability 0.1 the caption becomes "" (condition dropout, lecture 4); $c = \\tau(y)$ from the frozen text encoder;
        3. $t \\sim \\mathcal U\\{0, \\dots, 999\\}$, $\\epsilon \\sim \\mathcal N(0, I)$, $z_t = \\sqrt{\\bar\\alpha_t}\\,z_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon$;
        4. loss $= \\| \\epsilon - \\epsilon_\\theta(z_t, t, c) \\|^2$; only the UNet's weights move.

        Here is one such step written out, on a fresh UNet, with SD's noise schedule (`scaled_linear`, $\\beta$ from
        0.00085 to 0.012):
        """),
        code("""
            vae.requires_grad_(False)            # frozen, as train_unet will do
            text_encoder.requires_grad_(False)
            noise_scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule="scaled_linear",
                                            beta_start=0.00085, beta_end=0.012, clip_sample=False)
            g = torch.Generator().manual_seed(SEED)
            x, captions = data["image"][:8], data["caption"][:8]
            with torch.no_grad():
                z0 = vae.encode(x).sample(generator=g) * scale_factor                              # 1. (8, 4, 8, 8)
                keep = sample_keep_mask(len(captions), p=config.cond_dropout, generator=g)       # 2. drop 10%
                captions = [caption if k else "" for caption, k in zip(captions, keep.tolist())]
                tokens = tokenizer(captions, max_length=config.clip.max_length)
                c = text_encoder(tokens["input_ids"], tokens["attention_mask"]).last_hidden_state  # (8, L, D)
            t = torch.randint(0, config.num_train_timesteps, (len(x),), generator=g)              # 3.
            eps = torch.randn(z0.shape, generator=g)
            z_t = noise_scheduler.add_noise(z0, eps, t)
            loss = F.mse_loss(unet_preview(z_t, t, c, tokens["attention_mask"].bool()), eps)     # 4.
            loss.backward()
            print("captions this step:", captions)
            print(f"loss {loss.item():.3f}; every UNet parameter got a gradient:",
                  all(p.grad is not None for p in unet_preview.parameters()),
                  "| trainable VAE + text-encoder parameters:",
                  sum(p.numel() for p in [*vae.parameters(), *text_encoder.parameters()] if p.requires_grad))
        """),
        md("""
        `train_unet` runs exactly this step thousands of times, with three refinements: it encodes every image and
        caption once up front (they are frozen, so their outputs never change), it weights the loss per timestep with
        **min-SNR-γ** (Hang et al. 2023: low-noise timesteps are easy and would otherwise dominate the gradient), and it
        keeps an **EMA** of the weights for sampling. It checkpoints as it goes: interrupt the cell and run it again to
        continue.
        """),
        code("""
            unet, unet_report = train_unet(config, OUT_DIR, vae, text_encoder, tokenizer, scale_factor, data)
            print(f"UNet: {unet_report['parameters']:,} parameters, {unet_report['steps']} steps of "
                  f"{unet_report['batch_size']} latents (trained in {unet_report['seconds']:.0f} s)")
            pipe = build_pipeline(config, vae, text_encoder, tokenizer, unet, scale_factor)

            fig, axes = plt.subplots(1, 3, figsize=(15, 3.2))
            for ax, (title, report) in zip(axes, [("VAE: negative ELBO", vae_report), ("CLIP: contrastive", clip_report),
                                                  ("UNet: min-SNR weighted eps MSE", unet_report)]):
                plot_losses(report["losses"], ax=ax, title=title)
            fig.tight_layout()
        """),
        md("""
        ## 6. Algorithm 2: DDIM with classifier-free guidance

        Sampling starts from pure noise in latent space and runs the loop of lecture 4 with text instead of labels:
        the unconditional half of the doubled batch gets the empty prompt's vectors. Written out, it is the whole of
        `MiniSDPipeline.__call__`; we check that both give the same pixels.
        """),
        code("""
            @torch.no_grad()
            def generate(prompts, guidance_scale=GUIDANCE_SCALE, steps=NUM_INFERENCE_STEPS, seed=SEED, attention=None):
                '''Algorithm 2 with DDIM + CFG. attention: a list that collects per-step cross-attention maps.'''
                scheduler = pipe.scheduler
                scheduler.set_timesteps(steps)
                cond, cond_mask = pipe.encode_prompt(prompts)                    # tau(y): (B, L, D), mask (B, L)
                uncond, uncond_mask = pipe.encode_prompt([""] * len(prompts))    # tau(""): the null condition
                context, mask = torch.cat([uncond, cond]), torch.cat([uncond_mask, cond_mask])  # unconditional first
                z = torch.randn(pipe.latent_shape(len(prompts)), generator=torch.Generator().manual_seed(seed))
                for t in scheduler.timesteps:
                    if attention is None:
                        eps_uncond, eps_cond = unet(torch.cat([z, z]), t, context, mask).chunk(2)
                    else:
                        with unet.record_cross_attention() as maps:
                            eps_uncond, eps_cond = unet(torch.cat([z, z]), t, context, mask).chunk(2)
                        attention.append(average_cross_attention(maps)[len(prompts):])   # conditional half
                    eps = cfg_combine(eps_uncond, eps_cond, guidance_scale)
                    z = scheduler.step(eps, t, z).prev_sample                          # DDIM, eta = 0
                return pipe.decode_latents(z)                                          # D(z / s), in [-1, 1]


            prompts = [p for p, _, _ in prompt_set()]
            mine = generate(prompts[:4])
            z_T = torch.randn(pipe.latent_shape(4), generator=torch.Generator().manual_seed(SEED))
            library = pipe(prompts[:4], num_inference_steps=NUM_INFERENCE_STEPS, guidance_scale=GUIDANCE_SCALE,
                           latents=z_T, progress=False).images
            print("hand-written loop == MiniSDPipeline:", torch.allclose(mine, library, atol=1e-5))
        """),
        code("""
            held_out = {f"a {c} {s}" for c, s in config.held_out_pairs}
            seeds = list(range(SEEDS_PER_PROMPT))
            start = time.perf_counter()
            samples = torch.stack([generate(prompts, seed=seed) for seed in tqdm(seeds, desc="sampling")], dim=1)
            print(f"{samples.shape[0] * samples.shape[1]} images in {time.perf_counter() - start:.0f} s")   # (12, seeds, 3, H, W)

            shown = min(6, len(seeds))
            fig, ax = plt.subplots(figsize=(0.8 * shown + 2.5, 9))
            ax.imshow(image_grid(samples[:, :shown].flatten(0, 1), nrow=shown), interpolation="nearest")
            tile = config.image_size + 2
            ax.set_yticks([2 + tile * (i + 0.5) for i in range(len(prompts))],
                          [p + ("  (held out)" if p in held_out else "") for p in prompts])
            ax.set_xticks([2 + tile * (i + 0.5) for i in range(shown)], [f"seed {s}" for s in seeds[:shown]])
            ax.xaxis.tick_top()
            ax.tick_params(length=0)
            ax.set_title(f"txt2img: DDIM {NUM_INFERENCE_STEPS} steps, guidance {GUIDANCE_SCALE}", pad=25)
            for spine in ax.spines.values():
                spine.set_visible(False)
        """),
        md("""
        What the sampler sees along the way: at each step the UNet's current guess of the clean latent,
        $\\hat z_0$, decoded by the VAE. A rough blob with a position and a colour appears within the first steps, and
        can still change its mind (in the full run one object starts green and ends blue); by the middle of the chain
        the picture is settled, and the last steps only sharpen edges.
        """),
        code("""
            out = pipe(["a large blue square at the top left", "a small red triangle in the center",
                        "a yellow square at the bottom right"], num_inference_steps=NUM_INFERENCE_STEPS,
                       guidance_scale=GUIDANCE_SCALE, generator=torch.Generator().manual_seed(SEED),
                       return_trajectory=True, progress=False)
            every = max(1, len(out.trajectory) // 8)
            fig = plot_trajectory(out.trajectory[::every] + [out.images], out.timesteps[::every] + [0], max_images=3)
            fig.suptitle("decoded x0-prediction during sampling (last column: the result)", y=1.03);
        """),
        md("""
        ## 7. Judging the model

        Looking at grids does not scale, and our eyes are generous. We train an independent **evaluator**, a small CNN
        that reads shape and colour off *real* rendered images (all 12 pairs, with augmentations), and ask how often the
        generated picture shows what the prompt said (`prompt_accuracy`). Real text-to-image models are judged the same
        way with bigger referees (CLIP score, VQA-based benchmarks). The held-out pairs measure **compositional
        generalisation**: the model saw green things and triangles, but never a green triangle.

        We also compute an FID-like distance between generated and real images in the evaluator's feature space (only
        comparable between runs with the same evaluator and the same number of images).
        """),
        code("""
            evaluator, evaluator_report = (train_evaluator(num_train=500, steps=30, num_test=100, seed=SEED) if FAST
                                           else train_evaluator(seed=SEED))
            print(f"evaluator on real test images: shape {evaluator_report['shape_acc']:.3f}, "
                  f"colour {evaluator_report['colour_acc']:.3f}")

            target_shapes = torch.tensor([s for _, s, _ in prompt_set()]).repeat_interleave(len(seeds))
            target_colours = torch.tensor([c for _, _, c in prompt_set()]).repeat_interleave(len(seeds))
            is_held = torch.tensor([p in held_out for p in prompts]).repeat_interleave(len(seeds))
            real = shapes_batch(len(target_shapes), seed=config.seed + 20_000, image_size=config.image_size)["image"]


            def judge(images):
                images = images.flatten(0, 1)   # (12 * seeds, 3, H, W), prompt-major
                return {"seen": prompt_accuracy(evaluator, images[~is_held], target_shapes[~is_held], target_colours[~is_held]),
                        "held out": prompt_accuracy(evaluator, images[is_held], target_shapes[is_held], target_colours[is_held]),
                        "FID-like": feature_frechet_distance(evaluator, images, real)}


            scores = judge(samples)
            for split in ("seen", "held out"):
                s = scores[split]
                print(f"{split:>9} pairs: shape {s['shape_acc']:.2f}  colour {s['colour_acc']:.2f}  both {s['joint_acc']:.2f}"
                      f"  ({s['n']} images)")
            print(f"FID-like distance to real images: {scores['FID-like']:.1f}")

            per_prompt = per_prompt_accuracy(evaluator, samples.flatten(0, 1), target_shapes, target_colours)
            fig, ax = plt.subplots(figsize=(10, 3))
            names = list(per_prompt)
            ax.bar(names, [per_prompt[n]["joint_acc"] for n in names],
                   color=["C3" if f"a {n}" in held_out else "C0" for n in names])
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("shape and colour right")
            ax.set_title("prompt accuracy per prompt (red: held-out pairs)")
            ax.tick_params(axis="x", labelrotation=45)
        """),
        md("""
        Reading the numbers of the full run: colour is essentially always right; the errors are shapes, mostly circles
        drawn as rounded squares (an 8 × 8 latent has few cells to tell them apart). The held-out pairs lag behind the
        seen ones: "green triangle" composes fairly well, "yellow circle" tends to come out as a yellow square, the
        shape the model saw most often in yellow. Composing attributes that never co-occurred in training is hard for
        small models, and still a known weakness of real ones ("a red cube on a blue sphere").

        How does the guidance scale trade fidelity to the prompt against realism? The same seeds, four scales:
        """),
        code("""
            SCALES = (1.0, 3.0, 5.0, 7.5)
            sweep = {w: judge(torch.stack([generate(prompts, guidance_scale=w, seed=seed) for seed in seeds], dim=1))
                     for w in tqdm(SCALES, desc="guidance sweep")}
            fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
            for split, style in (("seen", "o-"), ("held out", "s--")):
                axes[0].plot(SCALES, [sweep[w][split]["joint_acc"] for w in SCALES], style, label=f"{split} pairs")
            axes[0].set_xlabel("guidance scale w")
            axes[0].set_ylabel("prompt accuracy (shape and colour)")
            axes[0].set_ylim(0, 1.05)
            axes[0].legend()
            axes[1].plot(SCALES, [sweep[w]["FID-like"] for w in SCALES], "o-", color="C2")
            axes[1].set_xlabel("guidance scale w")
            axes[1].set_ylabel("FID-like distance (lower = more realistic)")
            fig.tight_layout()
        """),
        md("""
        In the full run, accuracy on the seen pairs creeps up with $w$ while the held-out pairs do not improve:
        guidance amplifies what the model has learnt about a prompt, it cannot compose what the model never
        learnt. The FID-like distance is lowest around $w = 3$ (the library's default): below, images are
        less often what the prompt asked for; above, they get harsher and less varied.
        """),
        md("""
        ### Why "a yellow circle" comes out as a yellow square

        The UNet never sees words: it sees the text encoder's token states, and in a small *causal* encoder the state
        of "circle" is computed from "a yellow circle", so it carries the colour at least as strongly as the shape.
        Measured on the text encoder of the library's demo run: the cosine similarity between the state of "circle"
        in "a yellow circle" and the state of "square" in "a yellow square" is **0.89**; with the state of "circle"
        in "a red circle" it is only **0.18**. To the UNet, the prompt it never saw looks like one it knows well.

        A fix that costs almost nothing: give the UNet, next to those $L$ states, the $L$ *context-free* token
        embeddings (word + position, layer-normalised), so that "circle" also reaches the cross-attention on its own.
        That is `MiniSDConfig(text_features="last_hidden_state+token_embeddings")`, the library's default recipe
        (this lecture keeps Stable Diffusion v1.5's choice, `"last_hidden_state"`, to show the failure). With the
        same VAE, CLIP and UNet budget (`bench/ablations.py`, see `docs/results.md`), held-out prompt accuracy goes
        from 0.50 ("a yellow circle": 0 of 8 right) to 1.00, seen pairs stay at 1.00, and the FID-like distance falls
        from 261 to 172. Real systems fight the same effect with bigger text encoders (Imagen's T5) or several
        encoders at once (SDXL, eDiff-I).
        Try it: set `text_features="last_hidden_state+token_embeddings"` in the config cell at the top and re-run.
        """),
        md("""
        ## 8. img2img: start from a picture instead of noise (SDEdit)

        Encode an image, noise its latent to an intermediate timestep with the forward process, and run only the
        remaining part of the chain with a new prompt. `strength` $\\in [0, 1]$ is the share of the chain that is
        re-run: $0$ returns the input (through the VAE), $1$ ignores it. In between, the noise has erased detail up to
        some scale, and the model redraws everything below that scale according to the prompt. Watch the order in which
        things change: colour first (already at 0.1–0.2, through intermediate hues), then shape (0.3–0.5), and only at
        high strength the layout, size and position, which the noise has finally erased.
        """),
        code("""
            source = shapes_batch(4, seed=config.seed + 40_000, image_size=config.image_size, pairs=[("red", "circle")])
            STRENGTHS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.8)


            def img2img_row(strength, prompt="a blue square"):
                return pipe.img2img(source["image"], [prompt] * 4, strength=float(strength),
                                    num_inference_steps=NUM_INFERENCE_STEPS, guidance_scale=GUIDANCE_SCALE,
                                    generator=torch.Generator().manual_seed(SEED), progress=False).images


            rows = [source["image"]] + [img2img_row(s) for s in STRENGTHS]
            fig, ax = plt.subplots(figsize=(3.6, 6.5))
            ax.imshow(image_grid(torch.cat(rows), nrow=4), interpolation="nearest")
            tile = config.image_size + 2
            ax.set_yticks([2 + tile * (i + 0.5) for i in range(len(rows))], ["input"] + [f"strength {s}" for s in STRENGTHS])
            ax.set_xticks([])
            ax.set_title('red circles, prompt "a blue square"')
            for spine in ax.spines.values():
                spine.set_visible(False)
        """),
        code("""
            def show_img2img(strength):
                images = img2img_row(strength)
                fig = show_images(torch.cat([source["image"], images]), ncols=4, figsize=(5, 2.6))
                fig.suptitle(f'top: input; bottom: "a blue square", strength {strength:.2f}', y=1.02)
                return fig


            attach_widget(show_img2img, widgets.FloatSlider(value=0.6, min=0.0, max=1.0, step=0.05,
                                                            description="strength", continuous_update=False))
        """),
        md("""
        ## 9. Inpainting: regenerate a region, keep the rest

        A mask says which pixels to generate (1) and which to keep (0). We sample as for txt2img, but after every
        step the *known* region of the latent is overwritten by the original latent, noised to the current level, so
        the model only invents the masked part, and invents it to fit what surrounds it ("blended" inpainting, which
        works with any text-to-image model; SD's dedicated inpainting checkpoint instead takes the mask as extra
        UNet input channels). Here we replace an object: the mask is the yellow square's region, grown by a few pixels,
        and the prompt asks for something else. The model has to put the new object *inside* the hole, because the
        black background it is shown everywhere else says "nothing here".
        """),
        code("""
            source = shapes_batch(4, seed=config.seed + 50_000, image_size=config.image_size, pairs=[("yellow", "square")])
            is_object = (source["image"].amax(dim=1, keepdim=True) > -0.9).float()    # (4, 1, H, W): non-black pixels
            mask = F.max_pool2d(is_object, kernel_size=9, stride=1, padding=4)      # grown by 4 pixels: 1 = generate
            results = {prompt: pipe.inpaint(source["image"], mask, [prompt] * 4, num_inference_steps=NUM_INFERENCE_STEPS,
                                            guidance_scale=GUIDANCE_SCALE, generator=torch.Generator().manual_seed(SEED),
                                            progress=False).images
                       for prompt in ("a red triangle", "a blue circle")}
            shown_mask = source["image"] * (1 - mask) + mask * 0.2
            rows = [source["image"], shown_mask, *results.values()]
            fig, ax = plt.subplots(figsize=(4, 4.6))
            ax.imshow(image_grid(torch.cat(rows), nrow=4), interpolation="nearest")
            tile = config.image_size + 2
            ax.set_yticks([2 + tile * (i + 0.5) for i in range(len(rows))],
                          ["input", "mask (grey: generate)", *[f'"{p}"' for p in results]])
            ax.set_xticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        """),
        md("""
        ## 10. Where does each word look? Cross-attention maps

        In every SpatialTransformer, pixel $i$ distributes one unit of attention over the $L$ text tokens:
        $A_{i,\\ell} = \\mathrm{softmax}_\\ell(q_i \\cdot k_\\ell / \\sqrt d)$. Recording $A$ (`UNet.record_cross_attention()`),
        averaging over heads, layers and sampling steps (`average_cross_attention`) gives one heat map per token: which
        pixels listened to that word. Prompt-to-prompt editing (Hertz et al. 2022) works by editing exactly these maps.
        """),
        code("""
            attention_prompts = ["a large red circle at the top left", "a small blue triangle at the bottom right"]
            for prompt in attention_prompts:
                per_step = []
                image = generate([prompt], attention=per_step)
                maps = torch.stack(per_step).mean(dim=0)[0]                 # (L, h, w), averaged over steps
                ids = tokenizer([prompt], max_length=config.clip.max_length)
                n = int(ids["attention_mask"].sum())
                words = [tokenizer.vocab[i] for i in ids["input_ids"][0, :n].tolist()]
                fig = plot_attention_maps(image[0], maps[:n], words)
                fig.set_dpi(56)                                              # a wide figure: keep the file small
                fig.suptitle(f'"{prompt}"', y=1.05)
                plt.show()
        """),
        md("""
        Each panel is rescaled to its own range (it shows *where* a token looks, not how strongly compared to the other
        tokens). What the full run shows:

        - `<bos>` and "a" light up the **background**: pixels with nothing to draw attend to the tokens that carry no
          content, a "no-op" key. Real SD's `<|startoftext|>` plays the same role and receives most of the attention,
          which is why prompt-to-prompt visualisations leave it out.
        - Most words about the object ("small", "blue", "triangle") light up the **object**, but not every one in every
          prompt, and some function words ("at") do too. Lecture 5 explains why: the text encoder is causal, so "at"
          has already read the colour and the shape before it and can stand in for them. Which token carries a piece of
          information is the model's choice, not the grammar's.
        - Position words are the weak spot of our small model: position is named in only half of the captions and is
          the last thing it learns, so "top left" may well be drawn elsewhere.

        (With the short FAST training the maps are noise.)

        ## Summary

        - SD = frozen VAE (pixels ↔ latents, $z = s\\,E(x)$) + frozen text encoder ($\\tau(y)$: all token vectors) + a
          UNet trained with Algorithm 1 on latents (condition dropout for CFG) + a sampler (DDIM + CFG, Algorithm 2).
        - In the UNet, time enters through the ResBlocks, text only through cross-attention; skips carry detail.
        - img2img = start the chain late from a noised encoding (`strength`); inpainting = keep re-imposing the known
          region; cross-attention maps show which pixels listen to which word.
        - A referee (prompt accuracy) and held-out pairs turn "looks good" into numbers, including compositional
          generalisation.

        ## Check your understanding

        1. Which parts of the UNet see the timestep, and which see the text? What would be lost if the prompt were
           pooled into one vector and added to the time embedding instead of being cross-attended to?
        2. Why are the VAE and text encoder frozen while the UNet trains? What would happen to the latents if the VAE
           kept training?
        3. In the parameter table, which part dominates SD v1.5's UNet, and why is cross-attention comparatively cheap
           (hint: the shapes of $W_K$ and $W_V$)?
        4. What does the up-path ResBlock's input channel count tell you about the skip connections?
        5. Why does training pre-compute every caption's $\\tau(y)$ once? Could it do the same for $z_t$?
        6. img2img with strength 0.3 and 25 steps: how many UNet evaluations (with guidance)? Which timestep does it
           start from?
        7. The held-out pairs: did the model compose "green" + "triangle"? If it fails, is the failure in the text
           encoder or in the UNet? Design an experiment that tells them apart.
        8. Why do `<bos>` and "a" light up the background rather than the object in the cross-attention maps? What
           would happen to the background pixels' attention if every token carried content?
        """),
    ])


def main(argv: list[str]) -> int:
    builders = {"04": lecture_04, "05": lecture_05, "06": lecture_06}
    wanted = argv or list(builders)
    for key in wanted:
        name, nb = builders[key]()
        nbformat.validate(nb)
        path = ROOT / "lectures" / name
        nbformat.write(nb, path)
        print(f"wrote {path.relative_to(ROOT)} ({len(nb.cells)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
