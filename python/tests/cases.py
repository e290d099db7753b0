"""Shared test cases: policies and mask kinds, on small shapes."""

import pytest
import torch

import ssmax_torch as st

HEADS = 4


def policies():
    """Every policy, with parameters that make positions and n matter at small sizes."""
    s = torch.tensor([0.3, 0.5, 0.7, 0.9], dtype=torch.float64)
    b = torch.tensor([0.1, 0.0, 0.2, 0.4], dtype=torch.float64)
    return [
        pytest.param(st.Softmax(), id="softmax"),
        pytest.param(st.SSMax(0.6), id="ssmax-shared"),
        pytest.param(st.SSMax(s, b), id="ssmax-per-head"),
        pytest.param(st.SSMax(s, 0.2, fixed_length=7), id="ssmax-fixed"),
        pytest.param(st.QwenLogN(train_length=3), id="qwen"),
        pytest.param(st.Llama4Temperature(floor_scale=2, attn_scale=0.5), id="llama4"),
        pytest.param(st.Mistral(original_length=2, beta=0.7), id="mistral"),
    ]


def mask_kinds():
    """(id, n_q, n_k, keyword arguments): every mask kind, n_q != n_k where it makes sense.
    key_lengths keeps n_q == n_k here (see test_key_lengths_decode_positions)."""
    gen = torch.Generator().manual_seed(7)
    boolean = torch.rand(2, HEADS, 6, 9, generator=gen) > 0.4
    return [
        ("none", 6, 9, {}),
        ("causal", 6, 9, {"causal": True}),
        ("causal-prefill", 9, 9, {"causal": True}),
        ("causal-offset", 5, 9, {"causal": True, "query_offset": 2}),
        ("window", 6, 9, {"causal": True, "window": 3}),
        ("key-lengths", 9, 9, {"key_lengths": torch.tensor([9, 5])}),
        ("causal-key-lengths", 9, 9, {"causal": True, "key_lengths": [6, 9]}),
        ("boolean", 6, 9, {"attn_mask": boolean}),
        ("boolean-broadcast", 6, 9, {"attn_mask": boolean[0, 0]}),
        ("varlen", 9, 11, {"cu_seqlens_q": [0, 4, 9], "cu_seqlens_k": [0, 6, 11]}),
        ("varlen-causal", 9, 11,
         {"cu_seqlens_q": [0, 4, 9], "cu_seqlens_k": [0, 6, 11], "causal": True}),
    ]


def inputs(n_q, n_k, kwargs, heads=HEADS, kv_heads=2, d=5, dtype=torch.float64, seed=0,
           requires_grad=False):
    """Random q, k, v for a mask kind (batch 1 for varlen)."""
    batch = 1 if "cu_seqlens_q" in kwargs else 2
    gen = torch.Generator().manual_seed(seed)

    def make(n, h):
        return torch.randn(batch, n, h, d, generator=gen, dtype=dtype).requires_grad_(requires_grad)

    return make(n_q, heads), make(n_k, kv_heads), make(n_k, kv_heads)
