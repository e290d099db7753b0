"""Gradients: torch.autograd.gradcheck (float64) of q, k, v, s and b over every mask kind."""

import pytest
import torch

import ssmax_torch as st

import cases


@pytest.mark.parametrize("kind", cases.mask_kinds(), ids=lambda c: c[0])
def test_gradcheck_ssmax(kind):
    _, n_q, n_k, kwargs = kind
    q, k, v = cases.inputs(n_q, n_k, kwargs, d=3, requires_grad=True, seed=1)
    s = torch.tensor([0.3, 0.5, 0.7, 0.9], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.1, 0.3, 0.2, 0.4], dtype=torch.float64, requires_grad=True)

    def f(q, k, v, s, b):
        return st.attention(q, k, v, policy=st.SSMax(s, b), **kwargs)

    assert torch.autograd.gradcheck(f, (q, k, v, s, b), eps=1e-6, atol=1e-8, rtol=1e-5)


@pytest.mark.parametrize("policy", [
    pytest.param(st.Softmax(), id="softmax"),
    pytest.param(st.QwenLogN(train_length=3), id="qwen"),
    pytest.param(st.Llama4Temperature(floor_scale=2, attn_scale=0.5), id="llama4"),
    pytest.param(st.Mistral(original_length=2, beta=0.7), id="mistral"),
])
def test_gradcheck_other_policies(policy):
    q, k, v = cases.inputs(5, 8, {}, d=3, requires_grad=True, seed=2)

    def f(q, k, v):
        return st.attention(q, k, v, policy=policy, causal=True)

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-8, rtol=1e-5)


def test_gradcheck_shared_s_fixed_length_and_scale():
    q, k, v = cases.inputs(6, 6, {}, d=4, requires_grad=True, seed=3)
    s = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)

    def f(q, k, v, s):
        return st.attention(q, k, v, policy=st.SSMax(s, 0.1, fixed_length=5), causal=True,
                            scale=0.7)

    assert torch.autograd.gradcheck(f, (q, k, v, s), eps=1e-6, atol=1e-8, rtol=1e-5)


def test_float32_s_gets_float32_gradient():
    q, k, v = cases.inputs(6, 6, {}, d=4, dtype=torch.float32, requires_grad=True)
    s = torch.full((4,), 0.5, requires_grad=True)
    st.attention(q, k, v, policy=st.SSMax(s), causal=True).square().sum().backward()
    assert s.grad.dtype == torch.float32 and torch.all(s.grad != 0)
    assert q.grad.shape == q.shape and k.grad.shape == k.shape
