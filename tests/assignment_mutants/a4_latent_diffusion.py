"""Wrong answers to assignment 4 (guidance and latent diffusion) and the test cells that must catch them.

Each mutant replaces one answer cell of solutions/a4_latent_diffusion/a4_latent_diffusion.ipynb (see __init__.py).
The graded model (part 8) is the one trained by the source's FAST run and is sampled with the library's pipeline,
so no mutant touches test_prompt_colour / test_prompt_shape; test_generate swaps in a reference cfg_combine, so a
wrong guidance formula costs test_cfg_combine only.
"""

# --- clip_loss --------------------------------------------------------------------------------------------

CLIP_LOSS_IMAGE_TO_TEXT_ONLY = '''
def clip_loss(image_embeds, text_embeds, logit_scale):
    logits = logit_scale.exp() * image_embeds @ text_embeds.T
    labels = torch.arange(logits.shape[0])
    return F.cross_entropy(logits, labels)  # not symmetric: texts never pick their image
'''

CLIP_LOSS_NO_TEMPERATURE = '''
def clip_loss(image_embeds, text_embeds, logit_scale):
    logits = image_embeds @ text_embeds.T  # forgets exp(logit_scale)
    labels = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
'''

# --- zero_shot_classify -----------------------------------------------------------------------------------

ZERO_SHOT_SOFTMAX_OVER_IMAGES = '''
def zero_shot_classify(image_embeds, class_text_embeds, logit_scale):
    images, texts = F.normalize(image_embeds, dim=-1), F.normalize(class_text_embeds, dim=-1)
    probs = (logit_scale.exp() * images @ texts.T).softmax(dim=0)  # over the images, not the classes
    return probs.argmax(dim=-1), probs
'''

ZERO_SHOT_NOT_NORMALISED = '''
def zero_shot_classify(image_embeds, class_text_embeds, logit_scale):
    probs = (logit_scale.exp() * image_embeds @ class_text_embeds.T).softmax(dim=-1)  # dot products, not cosines
    return probs.argmax(dim=-1), probs
'''

# --- drop_condition ---------------------------------------------------------------------------------------

DROP_PROBABILITY_INVERTED = '''
def drop_condition(cond, uncond, p, generator=None):
    drop = torch.rand(cond.shape[0], generator=generator) >= p  # keeps with probability p instead of dropping
    drop = drop.reshape(-1, *([1] * (cond.ndim - 1)))
    return torch.where(drop, uncond.to(cond.dtype), cond)
'''

DROP_PER_ELEMENT = '''
def drop_condition(cond, uncond, p, generator=None):
    drop = torch.rand(cond.shape, generator=generator) < p  # one coin per number instead of one per row
    return torch.where(drop, uncond.to(cond.dtype).expand_as(cond), cond)
'''

# --- cfg_combine: the scale on the wrong difference / with the wrong sign ----------------------------------

CFG_SIGN_FLIPPED = '''
def cfg_combine(eps_uncond, eps_cond, guidance_scale):
    return eps_uncond - guidance_scale * (eps_cond - eps_uncond)
'''

CFG_FROM_THE_CONDITIONAL = '''
def cfg_combine(eps_uncond, eps_cond, guidance_scale):
    return eps_cond + guidance_scale * (eps_cond - eps_uncond)
'''

CFG_SCALE_ON_THE_UNCONDITIONAL = '''
def cfg_combine(eps_uncond, eps_cond, guidance_scale):
    return eps_cond + guidance_scale * (eps_uncond - eps_cond)
'''

# --- generate ---------------------------------------------------------------------------------------------

GENERATE_WITHOUT_GUIDANCE = '''
@torch.no_grad()
def generate(pipe, prompts, guidance_scale=GUIDANCE_SCALE, num_inference_steps=NUM_INFERENCE_STEPS, latents=None,
             generator=None):
    cond, cond_mask = pipe.encode_prompt(prompts)
    if latents is None:
        latents = torch.randn(pipe.latent_shape(len(prompts)), generator=generator)
    pipe.scheduler.set_timesteps(num_inference_steps)
    z = latents * pipe.scheduler.init_noise_sigma
    for t in pipe.scheduler.timesteps:
        z = pipe.scheduler.step(pipe.unet(z, t, cond, cond_mask), t, z).prev_sample  # conditional only
    return pipe.decode_latents(z)
'''

GENERATE_WITHOUT_PADDING_MASK = '''
@torch.no_grad()
def generate(pipe, prompts, guidance_scale=GUIDANCE_SCALE, num_inference_steps=NUM_INFERENCE_STEPS, latents=None,
             generator=None):
    cond, _ = pipe.encode_prompt(prompts)
    uncond, _ = pipe.encode_prompt([""] * len(prompts))
    context = torch.cat([uncond, cond])
    if latents is None:
        latents = torch.randn(pipe.latent_shape(len(prompts)), generator=generator)
    pipe.scheduler.set_timesteps(num_inference_steps)
    z = latents * pipe.scheduler.init_noise_sigma
    for t in pipe.scheduler.timesteps:
        eps_uncond, eps_cond = pipe.unet(torch.cat([z, z]), t, context).chunk(2)  # attends to <pad> tokens too
        z = pipe.scheduler.step(cfg_combine(eps_uncond, eps_cond, guidance_scale), t, z).prev_sample
    return pipe.decode_latents(z)
'''

# --- img2img_timesteps ------------------------------------------------------------------------------------

IMG2IMG_HEAD_INSTEAD_OF_TAIL = '''
def img2img_timesteps(timesteps, strength):
    n = len(timesteps)
    return timesteps[:min(int(n * strength), n)]  # the noisiest steps: starts from the wrong end
'''

IMG2IMG_ROUNDS = '''
def img2img_timesteps(timesteps, strength):
    n = len(timesteps)
    return timesteps[n - min(round(n * strength), n):]
'''

MUTANTS = [
    {"name": "clip_loss_image_to_text_only", "replace": {"clip_loss": CLIP_LOSS_IMAGE_TO_TEXT_ONLY},
     "expect_fail": ["test_clip_loss"]},
    {"name": "clip_loss_no_temperature", "replace": {"clip_loss": CLIP_LOSS_NO_TEMPERATURE},
     "expect_fail": ["test_clip_loss"]},
    {"name": "zero_shot_softmax_over_images", "replace": {"zero_shot_classify": ZERO_SHOT_SOFTMAX_OVER_IMAGES},
     "expect_fail": ["test_zero_shot_classify"]},
    {"name": "zero_shot_not_normalised", "replace": {"zero_shot_classify": ZERO_SHOT_NOT_NORMALISED},
     "expect_fail": ["test_zero_shot_classify"]},
    {"name": "drop_probability_inverted", "replace": {"drop_condition": DROP_PROBABILITY_INVERTED},
     "expect_fail": ["test_drop_condition"]},
    {"name": "drop_per_element", "replace": {"drop_condition": DROP_PER_ELEMENT},
     "expect_fail": ["test_drop_condition"]},
    {"name": "cfg_sign_flipped", "replace": {"cfg_combine": CFG_SIGN_FLIPPED},
     "expect_fail": ["test_cfg_combine"]},
    {"name": "cfg_from_the_conditional", "replace": {"cfg_combine": CFG_FROM_THE_CONDITIONAL},
     "expect_fail": ["test_cfg_combine"]},
    {"name": "cfg_scale_on_the_unconditional", "replace": {"cfg_combine": CFG_SCALE_ON_THE_UNCONDITIONAL},
     "expect_fail": ["test_cfg_combine"]},
    {"name": "generate_without_guidance", "replace": {"generate": GENERATE_WITHOUT_GUIDANCE},
     "expect_fail": ["test_generate"]},
    {"name": "generate_without_padding_mask", "replace": {"generate": GENERATE_WITHOUT_PADDING_MASK},
     "expect_fail": ["test_generate"]},
    {"name": "img2img_head_instead_of_tail", "replace": {"img2img_timesteps": IMG2IMG_HEAD_INSTEAD_OF_TAIL},
     "expect_fail": ["test_img2img_timesteps"]},
    {"name": "img2img_rounds", "replace": {"img2img_timesteps": IMG2IMG_ROUNDS},
     "expect_fail": ["test_img2img_timesteps"]},
]
