"""Forward against PyTorch's own math (tests/reference.py), float64."""

import pytest
import torch

import ssmax_torch as st

import cases
import reference

TOL = dict(rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("policy", cases.policies())
@pytest.mark.parametrize("kind", cases.mask_kinds(), ids=lambda c: c[0])
def test_matches_torch(policy, kind):
    _, n_q, n_k, kwargs = kind
    q, k, v = cases.inputs(n_q, n_k, kwargs)
    out, lse = st.attention(q, k, v, policy=policy, return_lse=True, **kwargs)
    want_kwargs = dict(kwargs)
    if "attn_mask" in kwargs:  # the reference needs the full shape
        want_kwargs["attn_mask"] = kwargs["attn_mask"].expand(q.shape[0], q.shape[2], n_q, n_k)
    want, want_lse = reference.attention(q, k, v, policy, **want_kwargs)
    torch.testing.assert_close(out, want, **TOL)
    torch.testing.assert_close(lse, want_lse, **TOL)


@pytest.mark.parametrize("heads,kv_heads,d", [(4, 4, 8), (4, 1, 7), (6, 2, 33), (3, 3, 1)])
def test_gqa_and_head_dims(heads, kv_heads, d):
    q, k, v = cases.inputs(7, 12, {}, heads=heads, kv_heads=kv_heads, d=d)
    policy = st.SSMax(torch.linspace(0.2, 0.8, heads, dtype=torch.float64))
    out = st.attention(q, k, v, policy=policy, causal=True, scale=0.3)
    want, _ = reference.attention(q, k, v, policy, causal=True, scale=0.3)
    torch.testing.assert_close(out, want, **TOL)


def test_float32_close_to_float64():
    q, k, v = cases.inputs(20, 30, {}, d=16)
    policy = st.SSMax(0.5)
    out = st.attention(q.float(), k.float(), v.float(), policy=policy, causal=True)
    assert out.dtype == torch.float32
    want, _ = reference.attention(q, k, v, policy, causal=True)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


def test_rows_without_keys_are_zero():
    q, k, v = cases.inputs(4, 4, {})
    out, lse = st.attention(q, k, v, key_lengths=[0, 4], return_lse=True)
    assert torch.all(out[0] == 0) and torch.all(torch.isneginf(lse[0]))


def test_unbatched_varlen():
    q, k, v = cases.inputs(9, 11, {"cu_seqlens_q": 1})
    kw = {"cu_seqlens_q": torch.tensor([0, 4, 9], dtype=torch.int32),
          "cu_seqlens_k": torch.tensor([0, 6, 11], dtype=torch.int32), "causal": True}
    out = st.attention(q[0], k[0], v[0], **kw)
    torch.testing.assert_close(out, st.attention(q, k, v, **kw)[0], rtol=0, atol=0)


def test_strided_and_non_contiguous_inputs():
    q, k, v = cases.inputs(6, 9, {}, d=8)
    want = st.attention(q, k, v, causal=True)
    # Heads-major storage: strided, head dimension contiguous (read in place).
    q_bhsd = q.transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(st.attention(q_bhsd, k, v, causal=True), want, rtol=0, atol=0)
    # Head dimension not contiguous: copied.
    k_odd = k.transpose(2, 3).contiguous().transpose(2, 3)
    assert k_odd.stride(3) != 1
    torch.testing.assert_close(st.attention(q, k_odd, v, causal=True), want, rtol=0, atol=0)


# Where key_lengths puts a sequence's queries when n_q < n_k: at the end of its own keys,
# max(0, key_lengths[b] - n_q) + i. Non-causal Softmax and SSMax cannot tell; causal masks
# and position-dependent policies can.
@pytest.mark.parametrize("policy,causal", [
    pytest.param(st.Softmax(), False, id="softmax"),
    pytest.param(st.SSMax(0.6, 0.1), False, id="ssmax"),
    pytest.param(st.Softmax(), True, id="softmax-causal"),
    pytest.param(st.SSMax(0.6, 0.1), True, id="ssmax-causal"),
    pytest.param(st.QwenLogN(train_length=3), False, id="qwen"),
    pytest.param(st.Llama4Temperature(floor_scale=2, attn_scale=0.5), False, id="llama4"),
    pytest.param(st.Mistral(original_length=2, beta=0.7), False, id="mistral"),
])
def test_key_lengths_decode_positions(policy, causal):
    q, k, v = cases.inputs(2, 12, {})
    lengths = [12, 7]
    out = st.attention(q, k, v, policy=policy, causal=causal, key_lengths=lengths)
    want, _ = reference.attention(q, k, v, policy, causal=causal, key_lengths=lengths)
    torch.testing.assert_close(out, want, **TOL)
