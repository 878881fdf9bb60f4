"""course_lib: the pieces of latent diffusion and Stable Diffusion, built to be read.

Import the modules you need, e.g. ``from course_lib.schedulers import DDIMScheduler``. This package file
stays light on purpose: importing ``course_lib`` does not import diffusers or transformers.
"""
__version__ = "0.1.0"
