# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Assignment 7: CLIP's text transformer, the part of Stable Diffusion that reads the prompt
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/assignments/a7_clip_text/a7_clip_text.ipynb)
#
# Stable Diffusion v1 never sees your prompt as words. A tokenizer turns it into 77 numbers, and the text half of
# OpenAI's CLIP (ViT-L/14) turns those into 77 vectors of 768 numbers: the `last_hidden_state` that every
# cross-attention layer of the UNet reads. In this assignment you write that text transformer yourself, with the
# parameter names of transformers' `CLIPTextModel`, and finish by loading the weights of a real (small)
# `CLIPTextModel` into yours: same numbers out. The same code, at full size, loads SD v1.5's text encoder.
#
# **What you will learn**
# - how a prompt becomes exactly 77 tokens: begin and end markers, truncation, padding;
# - token and learned position embeddings;
# - causal self-attention with biases, QuickGELU, and the pre-LayerNorm block that CLIP stacks 12 times;
# - the final LayerNorm, `last_hidden_state` (what SD uses) and the pooled end-of-text vector (what CLIP's
#   contrastive loss uses), with transformers' rule for where the end-of-text token is;
# - how transformers names and stores the weights, so checkpoints load with `load_state_dict`.
#
# **Prerequisites**: assignment 2 (attention, masks, heads); lecture 5 (CLIP).
#
# **Time**: 1.5-3 hours of work. Everything runs in seconds on a laptop CPU (nothing is trained, no GPU needed);
# grading your notebook takes about 10 seconds of CPU time.
#
# **Points** (21 in total, all autograded):
#
# | part | what | points |
# |---|---|---|
# | 1 | `pad_tokens`: 77 tokens per prompt, as SD's tokenizer pads them | 3 |
# | 2 | `CLIPTextEmbeddings` | 2 |
# | 3 | `causal_mask` and `CLIPAttention` | 4 |
# | 4 | `quick_gelu`, `CLIPMLP`, `CLIPEncoderLayer` | 4 |
# | 5 | `CLIPTextModel`: `last_hidden_state` equals transformers' (5), the pooled end-of-text vector (3) | 8 |
#
# Each test cell is all-or-nothing. Tests of later parts use reference versions of earlier parts, so a mistake
# costs points only once. The tests run the models in float64, where two correct implementations agree to about
# 1e-12; hidden tests (run when grading) compare with transformers and with a reference on random configurations.

# %% tags=["setup"]
# Colab: install the course library of this term (Colab's own torch stays); elsewhere nothing happens.
import sys
if "google.colab" in sys.modules:
    from importlib.metadata import version
    torch_pin = "torch==" + version("torch")  # keeps Colab's torch: the course never reinstalls it
    # pip's magic shows pip's output, and Colab's restart prompt should an upgraded package need one
    get_ipython().run_line_magic("pip", f'install "course_lib @ git+https://github.com/sd-course/latent-diffusion-course@2026-fall" "{torch_pin}"')
    if int(version("ipywidgets").split(".")[0]) >= 8:  # Colab shows ipywidgets 8 through this manager
        from google.colab import output
        output.enable_custom_widget_manager()

# %% nbgrader={"grade": false, "grade_id": "parameters", "locked": true, "schema_version": 3, "solution": false} tags=["parameters"]
# Parameters (read-only). This assignment trains nothing; FAST and AUTOGRADE follow the course's conventions.
import os

FAST = False
AUTOGRADE = os.environ.get("COURSE_AUTOGRADE") == "1"  # set by the graders
SEED = 0
MAX_LENGTH = 77  # SD v1's prompts are always 77 tokens

# %% nbgrader={"grade": false, "grade_id": "imports", "locked": true, "schema_version": 3, "solution": false}
import json
import math
import tempfile
import warnings
from typing import NamedTuple

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

with warnings.catch_warnings():  # transformers may warn about optional packages at import time
    warnings.simplefilter("ignore")
    import transformers
    from transformers import CLIPTextConfig, CLIPTokenizer

transformers.logging.set_verbosity_error()
torch.manual_seed(SEED)


def tiny_tokenizer() -> CLIPTokenizer:
    """SD's tokenizer (byte-level BPE, CLIP's format) with a vocabulary of 673 tokens instead of 49408:
    every word of the course's shapes world is one token; other text still tokenizes, byte by byte."""
    from course_lib.sd.tiny import tiny_tokenizer_files
    vocab, merges = tiny_tokenizer_files()
    folder = tempfile.mkdtemp(prefix="a7_tokenizer_")
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                         pad_token="<|endoftext|>")  # SD v1 pads with the end-of-text token


tokenizer = tiny_tokenizer()
print(f"vocabulary: {len(tokenizer)} tokens; BOS {tokenizer.bos_token_id}, EOS {tokenizer.eos_token_id}, "
      f"pad {tokenizer.pad_token_id}")
print("'a red circle' ->", tokenizer("a red circle", add_special_tokens=False)["input_ids"])

# %% [markdown]
# ## Part 1: 77 tokens per prompt (3 points)
#
# SD v1's tokenizer turns "a red circle" into the ids of its words, then frames and pads them:
#
# $$[\text{BOS},\ w_1, \dots, w_n,\ \text{EOS},\ \text{pad}, \dots, \text{pad}] \qquad \text{(exactly 77 ids)}$$
#
# A prompt with more than 75 word tokens is **truncated** to its first 75 (BOS and EOS always fit). SD v1 pads
# with the end-of-text token itself (`pad_token_id == eos_token_id`); the text encoder of SD v2 pads with
# another id. The `attention_mask` marks the real tokens (BOS, words, EOS) with 1 and the padding with 0.
#
# **Task**: implement `pad_tokens(token_ids, bos_token_id, eos_token_id, pad_token_id, max_length=77)` for a list
# of prompts, each a list of word-token ids; return `(input_ids, attention_mask)`, both `(B, max_length)` long
# tensors.

# %% nbgrader={"grade": false, "grade_id": "pad_tokens", "locked": false, "schema_version": 3, "solution": true}
def pad_tokens(token_ids: list[list[int]], bos_token_id: int, eos_token_id: int, pad_token_id: int,
               max_length: int = MAX_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """[BOS] + words (at most max_length - 2) + [EOS] + padding -> (input_ids, attention_mask), (B, max_length)."""
    ### BEGIN SOLUTION
    input_ids = torch.full((len(token_ids), max_length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(token_ids), max_length, dtype=torch.long)
    for row, words in enumerate(token_ids):
        framed = [bos_token_id] + list(words)[:max_length - 2] + [eos_token_id]
        input_ids[row, :len(framed)] = torch.tensor(framed)
        attention_mask[row, :len(framed)] = 1
    return input_ids, attention_mask
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_pad_tokens", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Visible tests: a worked example, shapes and dtype, truncation.
_ids, _mask = pad_tokens([[5, 6, 7], []], bos_token_id=10, eos_token_id=11, pad_token_id=0, max_length=8)
assert _ids.shape == _mask.shape == (2, 8) and _ids.dtype == _mask.dtype == torch.long, (
    f"expected two (2, 8) long tensors, got {tuple(_ids.shape)} {_ids.dtype} and {tuple(_mask.shape)} {_mask.dtype}")
assert _ids.tolist() == [[10, 5, 6, 7, 11, 0, 0, 0], [10, 11, 0, 0, 0, 0, 0, 0]], (
    f"expected [[10, 5, 6, 7, 11, 0, 0, 0], [10, 11, 0, 0, 0, 0, 0, 0]], got {_ids.tolist()}")
assert _mask.tolist() == [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]], (
    f"the mask marks BOS, the words and EOS with 1; got {_mask.tolist()}")
_ids, _mask = pad_tokens([list(range(100, 110))], 1, 2, 3, max_length=6)
assert _ids.tolist() == [[1, 100, 101, 102, 103, 2]] and _mask.tolist() == [[1] * 6], (
    f"a long prompt keeps its first max_length - 2 words and still ends with EOS; got {_ids.tolist()}")
### BEGIN HIDDEN TESTS
_prompts = ["a red circle", "", "a small blue square at the top left", " ".join(["green triangle"] * 50),
            "an unusual word: zebra!"]
_expected = tokenizer(_prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
_words = tokenizer(_prompts, add_special_tokens=False)["input_ids"]
_ids, _mask = pad_tokens(_words, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
assert torch.equal(_ids, _expected["input_ids"]) and torch.equal(_mask, _expected["attention_mask"])
_ids, _mask = pad_tokens(_words, tokenizer.bos_token_id, tokenizer.eos_token_id, 0, max_length=12)
assert _ids.shape == (5, 12) and (_ids[:, -1] != tokenizer.eos_token_id).sum() == 3 and _ids[1, 2:].eq(0).all()
assert _mask.sum(dim=1).tolist() == [5, 2, 10, 12, 12]
### END HIDDEN TESTS

# %% [markdown]
# ## Part 2: token and position embeddings (2 points)
#
# Every id picks a learned row of `token_embedding` (vocabulary x width); every position $0, \dots, L-1$ picks a
# learned row of `position_embedding` (77 x width). Their sum is the transformer's input:
# $x_0 = E[\text{input\_ids}] + P[0..L-1]$. CLIP learns the positions rather than using sinusoids.
#
# The configuration is transformers' `CLIPTextConfig`: use `config.vocab_size`, `config.hidden_size` (the width),
# `config.max_position_embeddings` (77), and later `config.num_attention_heads`, `config.intermediate_size`,
# `config.hidden_act`, `config.layer_norm_eps`, `config.num_hidden_layers`, `config.eos_token_id`.
#
# **Task**: write `CLIPTextEmbeddings(config)` with exactly the submodules `token_embedding` and
# `position_embedding` (both `nn.Embedding`); `forward(input_ids)` maps `(B, L)` ids, `L <= 77`, to `(B, L, width)`.

# %% nbgrader={"grade": false, "grade_id": "embeddings", "locked": false, "schema_version": 3, "solution": true}
class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        ### BEGIN SOLUTION
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        ### END SOLUTION

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)      # (L,)
        return self.token_embedding(input_ids) + self.position_embedding(positions)[None]  # (B, L, width)
        ### END SOLUTION


# %% nbgrader={"grade": false, "grade_id": "helpers", "locked": true, "schema_version": 3, "solution": false}
# Read-only helpers of the tests: small configurations, and the course's reference modules.
import course_lib.models.clip_text as _reference


def small_config(vocab_size=len(tokenizer), hidden_size=32, heads=4, layers=2, act="quick_gelu", eos_token_id=2,
                 max_positions=MAX_LENGTH, eps=1e-5):
    """A small CLIPTextConfig; eos_token_id=2 is the old configs' placeholder (SD v1's)."""
    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                          num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_positions,
                          hidden_act=act, layer_norm_eps=eps, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=eos_token_id, pad_token_id=tokenizer.pad_token_id)


def copied(module: nn.Module, reference: nn.Module) -> nn.Module:
    """module with the reference's weights (strict: every name must match), both in float64 and eval mode."""
    module.load_state_dict(reference.state_dict(), strict=True)
    return module.double().eval()


def rounding_bound(module: nn.Module, expected: torch.Tensor) -> float:
    """How far two correct float64 computations may differ: 2 x unit roundoff x (the sum of the fan-ins along the
    way, at most the number of parameters) x the magnitude (at least 1)."""
    terms = sum(p.numel() for p in module.parameters()) + 1
    return 2 * (torch.finfo(torch.float64).eps / 2) * terms * max(1.0, expected.abs().max().item())


def _use_references(*names):
    """Swap the course's reference versions in for the named pieces; returns what to put back."""
    yours = {name: globals()[name] for name in names}
    globals().update({name: getattr(_reference, name) for name in names})
    return yours


def _restore(yours):
    globals().update(yours)


# %% nbgrader={"grade": true, "grade_id": "test_embeddings", "locked": true, "points": 2, "schema_version": 3, "solution": false}
# Visible tests: names, shapes, the sum of the two lookups.
_config = small_config()
_emb = CLIPTextEmbeddings(_config)
_names = sorted(name for name, _ in _emb.named_parameters())
assert _names == ["position_embedding.weight", "token_embedding.weight"], f"parameter names must follow transformers: got {_names}"
assert _emb.position_embedding.weight.shape == (77, 32), "position_embedding has one row per position (77) of width hidden_size"
_ids = torch.tensor([[671, 353, 672]])
_out = _emb(_ids)
assert _out.shape == (1, 3, 32), f"expected (1, 3, 32), got {tuple(_out.shape)}"
assert torch.allclose(_out[0, 1], _emb.token_embedding.weight[353] + _emb.position_embedding.weight[1]), (
    "token 1 must be token_embedding[353] + position_embedding[1]")
### BEGIN HIDDEN TESTS
_g = torch.Generator().manual_seed(701)
for _c in [small_config(), small_config(vocab_size=50, hidden_size=24, max_positions=20)]:
    _ref = _reference.CLIPTextEmbeddings(_c)
    _mine = copied(CLIPTextEmbeddings(_c), _ref)
    for _L in (1, 7, _c.max_position_embeddings):
        _ids = torch.randint(0, _c.vocab_size, (3, _L), generator=_g)
        with torch.no_grad():
            _expected = _ref.double()(_ids)
            assert torch.allclose(_mine(_ids), _expected, rtol=0, atol=rounding_bound(_ref, _expected))
### END HIDDEN TESTS

# %% [markdown]
# ## Part 3: causal self-attention (4 points)
#
# CLIP's text model is a *masked* transformer: token $i$ may only look at tokens $j \le i$. Word 2 of "a red
# circle" never sees "circle", and the padding after EOS never changes the real tokens' features, even without an
# attention mask. The mask is a bool `(L, L)` tensor, True where attention is allowed (PyTorch's convention, as in
# assignment 2).
#
# `CLIPAttention` is multi-head self-attention as in assignment 2, except that **all four projections have a
# bias**: `q_proj`, `k_proj`, `v_proj`, `out_proj`, each `nn.Linear(width, width)`. With $h$ heads each head has
# $d = \text{width}/h$ channels and the scores are scaled by $1/\sqrt d$.
#
# **Tasks**: implement `causal_mask(n, device=None)`; write `CLIPAttention(config)` with `forward(x, mask)`:
# `x` is `(B, L, width)`, `mask` a bool tensor broadcastable to `(B, heads, L, L)`, returns `(B, L, width)`. You
# may use your attention from assignment 2 or `F.scaled_dot_product_attention` (with `attn_mask=mask`).

# %% nbgrader={"grade": false, "grade_id": "attention", "locked": false, "schema_version": 3, "solution": true}
def causal_mask(n: int, device=None) -> torch.Tensor:
    """(n, n) bool: True where key j <= query i."""
    ### BEGIN SOLUTION
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()
    ### END SOLUTION


class CLIPAttention(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        ### BEGIN SOLUTION
        width = config.hidden_size
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        ### END SOLUTION

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        B, L, C = x.shape
        q, k, v = (proj(x).view(B, L, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, h, L, d)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)               # (B, h, L, d)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, C))                  # (B, L, width)
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_attention", "locked": true, "points": 4, "schema_version": 3, "solution": false}
# Visible tests: the mask, names, and causality (changing a later token does not change earlier outputs).
assert causal_mask(3).dtype == torch.bool and causal_mask(3).tolist() == [
    [True, False, False], [True, True, False], [True, True, True]], f"causal_mask(3) must be lower-triangular, got {causal_mask(3).tolist()}"
_attn = CLIPAttention(small_config())
_names = sorted(name for name, _ in _attn.named_parameters())
assert _names == ["k_proj.bias", "k_proj.weight", "out_proj.bias", "out_proj.weight", "q_proj.bias", "q_proj.weight",
                  "v_proj.bias", "v_proj.weight"], f"parameter names must follow transformers: got {_names}"
_x = torch.randn(2, 6, 32)
_changed = _x.clone()
_changed[:, 4:] = torch.randn(2, 2, 32)
with torch.no_grad():
    _a, _b = _attn(_x, causal_mask(6)), _attn(_changed, causal_mask(6))
assert _a.shape == (2, 6, 32), f"expected (2, 6, 32), got {tuple(_a.shape)}"
assert torch.allclose(_a[:, :4], _b[:, :4], atol=1e-6), "with the causal mask, tokens 0-3 must not see tokens 4 and 5"
### BEGIN HIDDEN TESTS
for _n in (1, 5, 77):
    assert torch.equal(causal_mask(_n), torch.tril(torch.ones(_n, _n)).bool())
_g = torch.Generator().manual_seed(703)
for _c in [small_config(), small_config(hidden_size=48, heads=6), small_config(hidden_size=16, heads=1)]:
    _ref = _reference.CLIPAttention(_c)
    _mine = copied(CLIPAttention(_c), _ref)
    _x = torch.randn(3, 9, _c.hidden_size, generator=_g, dtype=torch.float64)
    _pad = torch.tensor([9, 4, 1])[:, None] > torch.arange(9)[None, :]              # (B, L) real tokens
    for _m in (torch.tril(torch.ones(9, 9)).bool(), torch.tril(torch.ones(9, 9)).bool() & _pad[:, None, None, :]):
        with torch.no_grad():
            _expected = _ref.double()(_x, _m)
            assert torch.allclose(_mine(_x, _m), _expected, rtol=0, atol=rounding_bound(_ref, _expected))
### END HIDDEN TESTS

# %% [markdown]
# ## Part 4: the pre-LayerNorm block (4 points)
#
# Each of CLIP's layers normalises **before** each sub-layer and adds the result back (pre-LN, as in GPT-2):
#
# $$x \leftarrow x + \operatorname{attn}(\operatorname{LN}_1(x)), \qquad x \leftarrow x + \operatorname{fc}_2\big(\sigma(\operatorname{fc}_1(\operatorname{LN}_2(x)))\big).$$
#
# The feed-forward widens to `intermediate_size` (4 x width in CLIP) and back. Its activation $\sigma$ is
# `config.hidden_act`: OpenAI's CLIP (SD v1) uses **QuickGELU**, $x \cdot \operatorname{sigmoid}(1.702\,x)$, a
# cheap approximation of GELU; OpenCLIP (SD v2) uses the exact GELU (`"gelu"`, `F.gelu`).
#
# **Task**: implement `quick_gelu(x)`; `CLIPMLP(config)` with `fc1`, `fc2` and the activation named by
# `config.hidden_act` (`"quick_gelu"` or `"gelu"`); `CLIPEncoderLayer(config)` with `self_attn` (a
# `CLIPAttention`), `layer_norm1`, `mlp` (a `CLIPMLP`), `layer_norm2` (LayerNorms with `eps=config.layer_norm_eps`)
# and `forward(x, mask)`.

# %% nbgrader={"grade": false, "grade_id": "encoder_layer", "locked": false, "schema_version": 3, "solution": true}
def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    return x * torch.sigmoid(1.702 * x)
    ### END SOLUTION


class CLIPMLP(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        ### BEGIN SOLUTION
        self.activation = quick_gelu if config.hidden_act == "quick_gelu" else F.gelu
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return self.fc2(self.activation(self.fc1(x)))
        ### END SOLUTION


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        ### BEGIN SOLUTION
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        ### END SOLUTION

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_encoder_layer", "locked": true, "points": 4, "schema_version": 3, "solution": false}
# Visible tests: QuickGELU's values, names, and the block against the course's reference (your CLIPAttention is
# replaced by the reference while this test runs, so that it grades part 4 only).
_x = torch.tensor([-2.0, 0.0, 1.0, 3.0])
assert torch.allclose(quick_gelu(_x), _x * torch.sigmoid(1.702 * _x)), "QuickGELU is x * sigmoid(1.702 x)"
_yours = _use_references("CLIPAttention")
try:
    _ref = _reference.CLIPEncoderLayer(small_config())
    _layer = CLIPEncoderLayer(small_config())
    _names = sorted(name for name, _ in _layer.named_parameters())
    assert _names == sorted(name for name, _ in _ref.named_parameters()), (
        f"parameter names must follow transformers (self_attn.*, layer_norm1, mlp.fc1, mlp.fc2, layer_norm2): got {_names}")
    _layer = copied(_layer, _ref)
    _x = torch.randn(2, 5, 32, dtype=torch.float64)
    with torch.no_grad():
        _expected = _ref.double()(_x, causal_mask(5))
        _diff = (_layer(_x, causal_mask(5)) - _expected).abs().max().item()
    assert _diff <= rounding_bound(_ref, _expected), (
        f"your block differs from the reference by {_diff:.2e}. Hints: normalise BEFORE each sub-layer, add the "
        "sub-layer's output to its input, use config.hidden_act")
    ### BEGIN HIDDEN TESTS
    _g = torch.Generator().manual_seed(704)
    for _c in [small_config(act="gelu", eps=1e-6), small_config(hidden_size=48, heads=6), small_config(act="quick_gelu")]:
        _ref = _reference.CLIPEncoderLayer(_c)
        _mine = copied(CLIPEncoderLayer(_c), _ref)
        _x = torch.randn(3, 8, _c.hidden_size, generator=_g, dtype=torch.float64) * 3
        with torch.no_grad():
            _expected = _ref.double()(_x, causal_mask(8))
            assert torch.allclose(_mine(_x, causal_mask(8)), _expected, rtol=0, atol=rounding_bound(_ref, _expected))
            _mlp = copied(CLIPMLP(_c), _ref.mlp)
            assert torch.allclose(_mlp(_x), _ref.mlp(_x), rtol=0, atol=rounding_bound(_ref.mlp, _ref.mlp(_x)))
    _x = torch.linspace(-8, 8, 201, dtype=torch.float64)
    assert torch.allclose(quick_gelu(_x), _reference.quick_gelu(_x), rtol=0, atol=1e-15)
    ### END HIDDEN TESTS
finally:
    _restore(_yours)

# %% [markdown]
# ## Part 5: the whole text model (8 points)
#
# ```
# x = embeddings(input_ids)                          # (B, L, width)
# for layer in encoder.layers:  x = layer(x, mask)   # mask: causal, and padded keys blocked if attention_mask
# last_hidden_state = final_layer_norm(x)            # (B, L, width): what SD's UNet cross-attends to
# pooler_output = last_hidden_state[b, eos_position[b]]   # (B, width): what CLIP's contrastive loss uses
# ```
#
# **The mask.** Always causal. If an `attention_mask` `(B, L)` is given (1 = real token), padded *keys* are blocked
# too: combine `causal_mask(L)[None, None]` with `attention_mask.bool()[:, None, None, :]` (bool "and"), giving
# `(B, 1, L, L)`. SD v1 passes no attention mask: thanks to the causal mask the padding cannot change the real
# tokens' features anyway, but the padding positions themselves (which the UNet also reads!) differ.
#
# **Where the end-of-text token is.** transformers' rule, which you must follow:
# - old configs, `config.eos_token_id == 2` (a placeholder that SD v1's config still carries): the EOS token has
#   the **largest id** in CLIP's vocabulary, so its position is `input_ids.argmax(dim=-1)` (the first one, if the
#   padding repeats it);
# - newer configs name the real id: the position is the **first** index where `input_ids == config.eos_token_id`
#   (tokens added to the vocabulary may have larger ids, so argmax would be wrong).
#
# **Task**: write `CLIPTextModel(config)` with `embeddings` (your `CLIPTextEmbeddings`), `encoder` (the
# `CLIPEncoder` given below), `final_layer_norm` (`eps=config.layer_norm_eps`), and `forward(input_ids,
# attention_mask=None)` returning a `CLIPTextOutput(last_hidden_state, pooler_output)`.

# %% nbgrader={"grade": false, "grade_id": "encoder_container", "locked": true, "schema_version": 3, "solution": false}
# Read-only: transformers keeps the layers in `encoder.layers`, so the names are encoder.layers.0.self_attn.q_proj...
class CLIPEncoder(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


class CLIPTextOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # (B, L, width)
    pooler_output: torch.Tensor      # (B, width)


# %% nbgrader={"grade": false, "grade_id": "text_model", "locked": false, "schema_version": 3, "solution": true}
class CLIPTextModel(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        ### BEGIN SOLUTION
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        ### END SOLUTION

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> CLIPTextOutput:
        ### BEGIN SOLUTION
        L = input_ids.shape[1]
        mask = causal_mask(L, input_ids.device)[None, None]                          # (1, 1, L, L)
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]                    # (B, 1, L, L)
        x = self.final_layer_norm(self.encoder(self.embeddings(input_ids), mask))
        if self.config.eos_token_id == 2:
            eos = input_ids.argmax(dim=-1)                                           # old configs
        else:
            eos = (input_ids == self.config.eos_token_id).int().argmax(dim=-1)       # first EOS
        return CLIPTextOutput(x, x[torch.arange(x.shape[0], device=x.device), eos])
        ### END SOLUTION


# %% nbgrader={"grade": false, "grade_id": "transformers_reference", "locked": true, "schema_version": 3, "solution": false}
# Read-only: a real transformers CLIPTextModel with random weights, and your model holding a copy of them.
from transformers import CLIPTextModel as TransformersCLIPTextModel


def transformers_pair(config: CLIPTextConfig, seed: int = 0):
    """(yours, theirs): transformers' model with random weights and yours with a copy, float64, eval mode."""
    torch.manual_seed(seed)
    theirs = TransformersCLIPTextModel(config).eval()
    yours = copied(CLIPTextModel(config), theirs)
    return yours, theirs.double()


_prompts = ["a red circle", "a small blue square at the top left", ""]
batch = tokenizer(_prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")

# %% nbgrader={"grade": true, "grade_id": "test_last_hidden_state", "locked": true, "points": 5, "schema_version": 3, "solution": false}
# Visible test: SD v1's setting (77 tokens padded with EOS, no attention mask), your model against transformers.
_yours = _use_references("CLIPTextEmbeddings", "CLIPEncoderLayer", "causal_mask")
try:
    _mine, _theirs = transformers_pair(small_config())
    with torch.no_grad():
        _out, _expected = _mine(batch["input_ids"]), _theirs(batch["input_ids"])
    assert _out.last_hidden_state.shape == (3, 77, 32), f"expected (3, 77, 32), got {tuple(_out.last_hidden_state.shape)}"
    _diff = (_out.last_hidden_state - _expected.last_hidden_state).abs().max().item()
    assert _diff <= rounding_bound(_theirs, _expected.last_hidden_state), (
        f"last_hidden_state differs from transformers' by {_diff:.2e}. Hints: the mask is causal; the final LayerNorm "
        "runs on every position")
    ### BEGIN HIDDEN TESTS
    _g = torch.Generator().manual_seed(705)
    for _c in [small_config(layers=3, eps=1e-6), small_config(hidden_size=48, heads=6, act="gelu", eos_token_id=tokenizer.eos_token_id)]:
        _mine, _theirs = transformers_pair(_c, seed=int(torch.randint(0, 100, (1,), generator=_g)))
        for _ids, _am in [(batch["input_ids"], batch["attention_mask"]), (batch["input_ids"][:, :20], None),
                          (batch["input_ids"][:2, :9], batch["attention_mask"][:2, :9])]:
            with torch.no_grad():
                _expected = _theirs(_ids, attention_mask=_am).last_hidden_state
                assert torch.allclose(_mine(_ids, _am).last_hidden_state, _expected, rtol=0,
                                      atol=rounding_bound(_theirs, _expected))
    ### END HIDDEN TESTS
finally:
    _restore(_yours)

# %% nbgrader={"grade": true, "grade_id": "test_pooled", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Visible test: the pooled vector is last_hidden_state at the first EOS (old config: eos_token_id == 2).
_yours = _use_references("CLIPTextEmbeddings", "CLIPEncoderLayer", "causal_mask")
try:
    _mine, _theirs = transformers_pair(small_config())
    with torch.no_grad():
        _out = _mine(batch["input_ids"])
    assert _out.pooler_output.shape == (3, 32), f"expected pooler_output (3, 32), got {tuple(_out.pooler_output.shape)}"
    for _row, _position in enumerate([4, 9, 1]):  # "a red circle" -> [BOS, a, red, circle, EOS, EOS, ...]
        assert torch.equal(_out.pooler_output[_row], _out.last_hidden_state[_row, _position]), (
            f"prompt {_row}: the first EOS is at position {_position}")
    ### BEGIN HIDDEN TESTS
    # a new config where argmax would be wrong: an added token (id above EOS) sits before EOS
    _c = small_config(vocab_size=len(tokenizer) + 5, eos_token_id=tokenizer.eos_token_id)
    _mine, _theirs = transformers_pair(_c, seed=3)
    _ids = batch["input_ids"].clone()
    _ids[0, 2] = len(tokenizer) + 2
    _ids[2, 1:] = tokenizer.eos_token_id
    for _am in (None, batch["attention_mask"]):
        with torch.no_grad():
            _expected = _theirs(_ids, attention_mask=_am).pooler_output
            assert torch.allclose(_mine(_ids, _am).pooler_output, _expected, rtol=0, atol=rounding_bound(_theirs, _expected))
    _mine, _theirs = transformers_pair(small_config(vocab_size=len(tokenizer) + 5, layers=1), seed=4)  # old config
    with torch.no_grad():
        _expected = _theirs(_ids).pooler_output
        assert torch.allclose(_mine(_ids).pooler_output, _expected, rtol=0, atol=rounding_bound(_theirs, _expected))
    ### END HIDDEN TESTS
finally:
    _restore(_yours)

# %% [markdown]
# ## Your encoder on its own
#
# Everything above ran with reference pieces swapped in. Here is your model with only your pieces, against
# transformers: the same three prompts, with and without the attention mask. Look at the padding positions: the
# causal mask keeps them from changing the real tokens, but with SD's setting (no attention mask) the padding rows
# still read the whole prompt, and SD's UNet sees all 77 rows.

# %%
try:
    _mine, _theirs = transformers_pair(small_config())
    with torch.no_grad():
        for _am in (None, batch["attention_mask"]):
            _diff = (_mine(batch["input_ids"], _am).last_hidden_state
                     - _theirs(batch["input_ids"], attention_mask=_am).last_hidden_state).abs().max().item()
            print(f"attention_mask {'given' if _am is not None else 'none (SD v1)'}: largest difference {_diff:.1e}")
        _features = _mine(batch["input_ids"]).last_hidden_state[0]                   # (77, 32) for "a red circle"
    _similarity = F.normalize(_features, dim=-1) @ F.normalize(_features, dim=-1).T
    fig, ax = plt.subplots(figsize=(4, 3.5))
    ax.imshow(_similarity[:12, :12], vmin=-1, vmax=1, cmap="coolwarm")
    ax.set_title("cosine similarity of the first 12 rows\n('a red circle', random weights)")
    ax.set_xlabel("position")
    ax.set_ylabel("position")
    fig.tight_layout()
except NotImplementedError:
    print("(implement the parts above to compare your encoder with transformers')")

# %% [markdown]
# ## Going further (not graded)
#
# - Build `small_config` with the width of SD v1.5's text encoder (`hidden_size=768`, 12 heads, 12 layers,
#   `intermediate_size=3072`, `vocab_size=49408`) and count the parameters of your model: 123,060,480.
# - On Colab, load SD v1.5's `text_encoder` weights into your class (`CLIPTextModel.from_pretrained` of
#   transformers, then `load_state_dict` of its state dict) and compare the two on a real prompt.
# - "CLIP skip": some SD fine-tunes read the hidden states of the second-to-last layer instead of the last. Add an
#   option for it; which LayerNorm should then be applied?

# %% [markdown]
# ## Submitting
#
# 1. Run every cell from the top (*Kernel -> Restart & Run All*) and check that the visible tests pass.
# 2. Submit **`a7_clip_text.ipynb`** (on Colab: download it from the file browser on the left first).
#    The graders run your notebook with `COURSE_AUTOGRADE=1` on a CPU.
# 3. Do not rename the notebook, and do not change the read-only cells: they are restored before grading.
