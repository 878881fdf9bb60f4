"""Wrong answers to assignment 2 (attention) and the test cells that must catch them (see __init__.py)."""

MISSING_SQRT_D = '''
def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights
'''

SOFTMAX_OVER_QUERIES = '''
def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-2)
    return weights @ v, weights
'''

MASK_AFTER_SOFTMAX = '''
def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    weights = scores.softmax(dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ v, weights
'''

MUTANTS = [
    {"name": "missing_sqrt_d", "replace": {"scaled_dot_product_attention": MISSING_SQRT_D},
     "expect_fail": ["test_attention", "test_attention_mask"]},
    {"name": "softmax_over_queries", "replace": {"scaled_dot_product_attention": SOFTMAX_OVER_QUERIES},
     "expect_fail": ["test_attention", "test_attention_mask"]},
    {"name": "mask_after_softmax", "replace": {"scaled_dot_product_attention": MASK_AFTER_SOFTMAX},
     "expect_fail": ["test_attention_mask"]},
]
