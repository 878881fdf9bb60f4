"""Wrong answers to assignment 7 (CLIP's text transformer) and the test cells that must catch them (see __init__.py)."""

NO_TRUNCATION = '''
def pad_tokens(token_ids, bos_token_id, eos_token_id, pad_token_id, max_length=MAX_LENGTH):
    input_ids = torch.full((len(token_ids), max_length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(token_ids), max_length, dtype=torch.long)
    for row, words in enumerate(token_ids):
        framed = ([bos_token_id] + list(words) + [eos_token_id])[:max_length]
        input_ids[row, :len(framed)] = torch.tensor(framed)
        attention_mask[row, :len(framed)] = 1
    return input_ids, attention_mask
'''

NO_POSITIONS = '''
class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids):
        return self.token_embedding(input_ids)
'''

_ATTENTION = '''
def causal_mask(n, device=None):
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


class CLIPAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        width = config.hidden_size
        self.q_proj = nn.Linear(width, width, bias=BIAS)
        self.k_proj = nn.Linear(width, width, bias=BIAS)
        self.v_proj = nn.Linear(width, width, bias=BIAS)
        self.out_proj = nn.Linear(width, width, bias=BIAS)

    def forward(self, x, mask):
        B, L, C = x.shape
        q, k, v = (proj(x).view(B, L, self.num_heads, C // self.num_heads).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=MASK)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, C))
'''
NO_BIAS = _ATTENTION.replace("BIAS", "False").replace("MASK", "mask")
MASK_IGNORED = _ATTENTION.replace("BIAS", "True").replace("MASK", "None")

_LAYER = '''
def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


class CLIPMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.activation = ACTIVATION
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.fc2(self.activation(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x, mask):
        BODY
'''
_PRE_LN = "x = x + self.self_attn(self.layer_norm1(x), mask)\n        return x + self.mlp(self.layer_norm2(x))"
_POST_LN = "x = self.layer_norm1(x + self.self_attn(x, mask))\n        return self.layer_norm2(x + self.mlp(x))"
POST_LN = _LAYER.replace("ACTIVATION", 'quick_gelu if config.hidden_act == "quick_gelu" else F.gelu').replace("BODY", _POST_LN)
ALWAYS_GELU = _LAYER.replace("ACTIVATION", "F.gelu").replace("BODY", _PRE_LN)

_MODEL = '''
class CLIPTextModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids, attention_mask=None):
        L = input_ids.shape[1]
        mask = causal_mask(L, input_ids.device)[None, None]
        if attention_mask is not None and USE_MASK:
            mask = mask & attention_mask.bool()[:, None, None, :]
        x = FINAL(self.encoder(self.embeddings(input_ids), mask))
        EOS
        return CLIPTextOutput(x, x[torch.arange(x.shape[0]), eos])
'''
_RULE = ("if self.config.eos_token_id == 2:\n            eos = input_ids.argmax(dim=-1)\n        else:\n"
         "            eos = (input_ids == self.config.eos_token_id).int().argmax(dim=-1)")


def _model(use_mask="True", final="self.final_layer_norm", eos=_RULE):
    return _MODEL.replace("USE_MASK", use_mask).replace("FINAL", final).replace("EOS", eos)


MUTANTS = [
    {"name": "no_truncation", "replace": {"pad_tokens": NO_TRUNCATION}, "expect_fail": ["test_pad_tokens"]},
    {"name": "no_positions", "replace": {"embeddings": NO_POSITIONS}, "expect_fail": ["test_embeddings"]},
    {"name": "attention_without_bias", "replace": {"attention": NO_BIAS}, "expect_fail": ["test_attention"]},
    {"name": "attention_ignores_mask", "replace": {"attention": MASK_IGNORED}, "expect_fail": ["test_attention"]},
    {"name": "post_layernorm", "replace": {"encoder_layer": POST_LN}, "expect_fail": ["test_encoder_layer"]},
    {"name": "gelu_not_quick_gelu", "replace": {"encoder_layer": ALWAYS_GELU}, "expect_fail": ["test_encoder_layer"]},
    {"name": "no_final_layer_norm", "replace": {"text_model": _model(final="")},
     "expect_fail": ["test_last_hidden_state", "test_pooled"]},
    {"name": "padding_mask_ignored", "replace": {"text_model": _model(use_mask="False")},
     "expect_fail": ["test_last_hidden_state"]},
    {"name": "pooled_always_argmax", "replace": {"text_model": _model(eos="eos = input_ids.argmax(dim=-1)")},
     "expect_fail": ["test_pooled"]},
    {"name": "pooled_last_token", "replace": {"text_model": _model(eos="eos = torch.full((x.shape[0],), -1)")},
     "expect_fail": ["test_pooled"]},
]
