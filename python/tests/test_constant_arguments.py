"""Arguments without a gradient: a tensor that requires grad is refused (ArgumentError naming
the argument) wherever ssmax_torch computes no gradient for it, instead of being read as a
number and its gradient lost. Only q, k, v and SSMax's s and b get gradients."""

import pytest
import torch

import ssmax_torch as st

D = torch.float64


def qkv():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 3, 2, 4, dtype=D, generator=g, requires_grad=True) for _ in range(3)]


def grad_tensor(value=0.5):
    return torch.tensor(value, dtype=D, requires_grad=True)


def refused(argument, call):
    with pytest.raises(st.ArgumentError) as info:
        call()
    assert info.value.argument == argument, str(info.value)
    assert f"'{argument}'" in str(info.value) and "requires grad" in str(info.value)


def test_attention_scale_that_requires_grad_is_refused():
    q, k, v = qkv()
    refused("scale", lambda: st.attention(q, k, v, scale=grad_tensor()))
    refused("scale", lambda: st.attention(q, k, v, policy=st.SSMax(0.5), causal=True,
                                          scale=torch.full((1,), 0.5, requires_grad=True)))
    # A tensor without grad (detached) is read as the number.
    want = st.attention(q, k, v, scale=0.5)
    assert torch.equal(st.attention(q, k, v, scale=torch.tensor(0.5)), want)
    assert torch.equal(st.attention(q, k, v, scale=grad_tensor().detach()), want)


@pytest.mark.parametrize("argument,make", [
    ("attn_scale", lambda: st.Llama4Temperature(8, grad_tensor(0.1))),
    ("beta", lambda: st.Mistral(4, grad_tensor(0.1))),
])
def test_policy_constants_that_require_grad_are_refused(argument, make):
    refused(argument, make)


@pytest.mark.parametrize("argument,make", [
    ("scale", lambda: st.ScalableSoftmaxAttention(8, 2, scale=torch.nn.Parameter(
        torch.tensor(0.5)))),
    ("s_init", lambda: st.ScalableSoftmaxAttention(8, 2, s_init=grad_tensor())),
    ("b_init", lambda: st.ScalableSoftmaxAttention(8, 2, b_init=grad_tensor())),
    ("s", lambda: st.replace_softmax(torch.nn.MultiheadAttention(8, 2), s=grad_tensor())),
    ("b", lambda: st.replace_softmax(torch.nn.MultiheadAttention(8, 2), s=0.5,
                                     b=grad_tensor())),
    ("s", lambda: st.replace_softmax(torch.nn.MultiheadAttention(8, 2), s=grad_tensor(),
                                     learnable=True)),
])
def test_module_constants_that_require_grad_are_refused(argument, make):
    refused(argument, make)


def test_module_scale_that_requires_grad_is_refused_and_without_grad_is_the_number():
    refused("scale", lambda: st.ScalableSoftmaxAttention(8, 2, scale=grad_tensor(0.3)))
    torch.manual_seed(0)
    a = st.ScalableSoftmaxAttention(8, 2, scale=0.3, dtype=D)
    b = st.ScalableSoftmaxAttention(8, 2, scale=grad_tensor(0.3).detach(), dtype=D)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 5, 8, dtype=D)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("argument", ["attn_mask", "key_padding_mask"])
def test_replace_softmax_float_mask_that_requires_grad_is_refused(argument):
    torch.manual_seed(0)
    layer = st.replace_softmax(torch.nn.MultiheadAttention(8, 2, batch_first=True).double(), s=0.5)
    x = torch.randn(2, 5, 8, dtype=D)
    shape = (5, 5) if argument == "attn_mask" else (2, 5)
    mask = torch.zeros(shape, dtype=D, requires_grad=True)  # an additive bias of 0
    refused(argument, lambda: layer(x, x, x, **{argument: mask}))
    want = layer(x, x, x)[0]
    torch.testing.assert_close(layer(x, x, x, **{argument: mask.detach()})[0], want,
                               rtol=0, atol=0)
