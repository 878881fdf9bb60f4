"""A tiny Stable Diffusion with random weights: the same classes and folder layout as the real v1.5.

Everything the course does to SD v1.5 on a Colab GPU (load, sample, LoRA fine-tune, save, reload) runs on this
folder in seconds on a CPU, offline. Only the widths shrink:

    component     real SD v1.5                                tiny
    unet          320/640/1280/1280, 2 layers, ctx 768        32/64, 1 layer, ctx 32, 8x8 latents
    vae           128/256/512/512 (f = 8)                     16/16/32/32 (still 4 blocks, so f = 8)
    text_encoder  CLIP ViT-L/14 text: 768 wide, 12 layers     32 wide, 2 layers, 4 heads, 77 positions
    tokenizer     49408 byte-level BPE tokens                 ~700 tokens: 512 byte symbols + toy words
    scheduler     PNDM, scaled_linear 0.00085 -> 0.012        the same

Byte-level BPE in one paragraph: text is lower-cased, split into words, and every byte of a word becomes one
of 256 printable symbols (``_byte_symbols``); the last symbol of a word carries the suffix ``</w>``. The
merges, in priority order, repeatedly join the highest-priority adjacent pair. Our merges are chosen so that
each toy word ("red", "circle", ...) ends up as a single token; any other text still tokenizes, byte by byte.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from course_lib._checks import check_int
from course_lib._io import atomic_write_bytes, atomic_write_json
from course_lib.sd.architecture import SD15_SCHEDULER

__all__ = ["TOY_WORDS", "TINY_UNET", "TINY_VAE", "TINY_TEXT_ENCODER", "build_tiny_sd", "tiny_tokenizer_files"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
TOY_WORDS = (
    "a an the of on in with and photo picture drawing painting style sks toy "
    "red green blue yellow orange purple pink white black gray brown "
    "circle square triangle star cross ring dot shape small big large bright dark background "
    "at top bottom left right center centre middle"
).split()

TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32)
TINY_VAE = dict(sample_size=64, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                block_out_channels=(16, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, scaling_factor=0.18215)
TINY_TEXT_ENCODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu")


def _byte_symbols() -> list[str]:
    """256 printable characters, one per byte value (GPT-2/CLIP's byte-level alphabet).

    Printable Latin-1 bytes stand for themselves; the others (control characters, space, ...) are given the
    unused code points 256, 257, ... in byte order, so no symbol is invisible whitespace.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), 256))
    symbols, extra = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE on one word: join the best-ranked adjacent pair (all its occurrences) until none is in ``ranks``."""
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), pair) for pair in zip(symbols, symbols[1:])]
        rank, best = min(pairs)
        if rank == len(ranks):
            break
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def _word_symbols(word: str, alphabet: list[str]) -> list[str]:
    symbols = [alphabet[b] for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    return symbols


def tiny_tokenizer_files(words=TOY_WORDS) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) of a byte-level BPE in CLIP's format in which every word of ``words`` is one token.

    vocab order follows CLIP's: 256 byte symbols, the same with ``</w>``, merged tokens, then BOS and EOS.
    """
    alphabet = _byte_symbols()
    tokens = alphabet + [s + "</w>" for s in alphabet]
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        if not isinstance(word, str) or not word or word.lower() != word or " " in word:
            raise ValueError(f"words must hold non-empty lower-case strings without spaces, got {word!r}")
        # add merges, lowest priority last, until BPE (with all merges so far) joins the word into one token
        while len(symbols := _apply_merges(_word_symbols(word, alphabet), ranks)) > 1:
            ranks[(symbols[0], symbols[1])] = len(ranks)
            tokens.append(symbols[0] + symbols[1])
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens + [BOS, EOS]))}
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda item: item[1])]
    return vocab, merges


def _write_tokenizer(folder: Path) -> None:
    vocab, merges = tiny_tokenizer_files()
    atomic_write_json(folder / "vocab.json", vocab)
    atomic_write_bytes(folder / "merges.txt", ("#version: 0.2\n" + "\n".join(merges) + "\n").encode("utf-8"))
    atomic_write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS})


def _tiny_components(tokenizer_folder: Path, seed: int):
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                 **TINY_TEXT_ENCODER)
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's global RNG
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_UNET)
        vae = AutoencoderKL(**TINY_VAE)
        text_encoder = CLIPTextModel(text_config)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                scheduler=PNDMScheduler.from_config(SD15_SCHEDULER))  # from_config keeps DDIM's clip_sample


def build_tiny_sd(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random-weight SD in diffusers' layout to ``folder`` (which must be missing or empty).

    The result loads offline with ``StableDiffusionPipeline.from_pretrained(folder)`` and
    ``load_sd_components(folder)``. The same ``seed`` gives the same weights. Returns ``Path(folder)``.
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise ValueError(f"folder must be a str or path, got {type(folder).__name__}")
    check_int("seed", seed, minimum=0)
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"folder must be missing or an empty directory, got {str(folder)!r}")
    from diffusers import StableDiffusionPipeline
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:  # build next to the target, then rename: a crash never leaves a half-written model folder
        _write_tokenizer(staging / "tokenizer")
        parts = _tiny_components(staging / "tokenizer", seed)
        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.save_pretrained(staging, safe_serialization=True)
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
