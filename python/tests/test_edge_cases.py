"""What a new user's first tries hit: lse in a loss, double backward, negative s, zero-size
dimensions, argument coercion, NaN inputs."""

import math

import pytest
import torch

import ssmax_torch as st

D = torch.float64


def qkv(b=1, n_q=3, n_k=4, h=2, h_kv=2, d=3, grad=True):
    g = torch.Generator().manual_seed(0)
    make = lambda *shape: torch.randn(*shape, dtype=D, generator=g).requires_grad_(grad)
    return make(b, n_q, h, d), make(b, n_k, h_kv, d), make(b, n_k, h_kv, d)


def test_lse_in_a_loss_raises_instead_of_dropping_its_gradient():
    q, k, v = qkv()
    out, lse = st.attention(q, k, v, return_lse=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        (out.sum() + (lse ** 2).sum()).backward()
    out, lse = st.attention(q, k, v, return_lse=True)
    (out.sum() + (lse.detach() ** 2).sum()).backward()  # detached: fine
    assert q.grad is not None


def test_double_backward_raises():
    q, k, v = qkv()
    out = st.attention(q, k, v)
    g, = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(out.sum() + (g ** 2).sum(), q)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_infinite_s_and_b_are_refused_at_construction(value):
    mha = torch.nn.MultiheadAttention(8, 2)
    for kwargs, argument in [(dict(s=value), "s"), (dict(s=0.5, b=value), "b")]:
        with pytest.raises(st.ArgumentError) as info:
            st.replace_softmax(mha, **kwargs)
        assert info.value.argument == argument
        with pytest.raises(st.ArgumentError) as info:
            st.replace_softmax(torch.nn.Sequential(mha), learnable=True, **kwargs)
        assert info.value.argument == argument
    for kwargs, argument in [(dict(s_init=value), "s_init"), (dict(b_init=value), "b_init")]:
        with pytest.raises(st.ArgumentError) as info:
            st.ScalableSoftmaxAttention(8, 2, **kwargs)
        assert info.value.argument == argument


@pytest.mark.parametrize("shape_q,shape_k", [
    ((1, 0, 2, 3), (1, 4, 2, 3)),  # n_q = 0
    ((0, 3, 2, 3), (0, 4, 2, 3)),  # B = 0
    ((1, 3, 0, 3), (1, 4, 0, 3)),  # H = 0
    ((2, 3, 4, 3), (2, 0, 2, 3)),  # n_k = 0: every row sees no key
])
@pytest.mark.parametrize("policy", [st.Softmax(), "ssmax"])
def test_zero_size_dimensions(shape_q, shape_k, policy):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(shape_q, dtype=D, generator=g).requires_grad_()
    k = torch.randn(shape_k, dtype=D, generator=g).requires_grad_()
    v = torch.randn(shape_k, dtype=D, generator=g).requires_grad_()
    s = torch.full((shape_q[2],), 0.5, dtype=D, requires_grad=True)
    pol = st.SSMax(s) if policy == "ssmax" else policy
    out, lse = st.attention(q, k, v, policy=pol, causal=True, return_lse=True)
    assert out.shape == q.shape and out.dtype == D
    assert lse.shape == (shape_q[0], shape_q[2], shape_q[1])
    assert torch.equal(out, torch.zeros_like(out))
    assert bool(torch.isneginf(lse).all())
    out.sum().backward()
    for t in (q, k, v) + ((s,) if policy == "ssmax" else ()):
        assert t.grad is not None and t.grad.shape == t.shape and not bool(t.grad.any())


def test_zero_head_dimension_is_refused():
    q, k, v = qkv(d=0, grad=False)
    with pytest.raises(st.ArgumentError) as info:
        st.attention(q, k, v)
    assert info.value.argument == "q"


@pytest.mark.parametrize("argument,call", [
    ("window", lambda a: a(causal=True, window=1.5)),
    ("window", lambda a: a(causal=True, window=True)),
    ("window", lambda a: a(causal=True, window="2")),
    ("window", lambda a: a(causal=True, window=2**64)),
    ("query_offset", lambda a: a(query_offset=1.5)),
    ("query_offset", lambda a: a(query_offset=2**63)),
    ("causal", lambda a: a(causal=1)),
    ("causal", lambda a: a(causal="yes")),
    ("scale", lambda a: a(scale=10**400)),
    ("scale", lambda a: a(scale="0.5")),
    ("key_lengths", lambda a: a(key_lengths=[True])),
    ("key_lengths", lambda a: a(key_lengths=["3"])),
    ("key_lengths", lambda a: a(key_lengths=[2**64])),
    ("fixed_length", lambda a: st.SSMax(0.5, fixed_length=2.5)),
    ("fixed_length", lambda a: st.SSMax(0.5, fixed_length="10")),
    ("fixed_length", lambda a: st.SSMax(0.5, fixed_length=2**63)),
    ("s", lambda a: st.SSMax("abc")),
    ("s", lambda a: st.SSMax([0.1])),
    ("b", lambda a: st.SSMax(0.5, "abc")),
    ("train_length", lambda a: st.QwenLogN(2.5)),
    ("floor_scale", lambda a: st.Llama4Temperature(False)),
    ("attn_scale", lambda a: st.Llama4Temperature(8, "x")),
    ("original_length", lambda a: st.Mistral(1.5)),
    ("beta", lambda a: st.Mistral(4, None)),
    ("embed_dim", lambda a: st.ScalableSoftmaxAttention(0, 2)),
    ("embed_dim", lambda a: st.ScalableSoftmaxAttention(-4, 2)),
    ("num_heads", lambda a: st.ScalableSoftmaxAttention(8, 0)),
    ("num_heads", lambda a: st.ScalableSoftmaxAttention(8, -2)),
    ("num_heads", lambda a: st.ScalableSoftmaxAttention(8, 2.0)),
    ("x", lambda a: st.ScalableSoftmaxAttention(8, 2)(torch.randn(5, 8))),
    ("x", lambda a: st.ScalableSoftmaxAttention(8, 2)(torch.randn(1, 5, 6))),
])
def test_scalar_arguments_are_checked_and_named(argument, call):
    q, k, v = qkv(grad=False)
    with pytest.raises(st.ArgumentError) as info:
        call(lambda **kw: st.attention(q, k, v, **kw))
    assert info.value.argument == argument, str(info.value)
    assert f"'{argument}'" in str(info.value)


def test_integral_arguments_are_accepted_in_every_integer_form():
    q, k, v = qkv(grad=False)
    want = st.attention(q, k, v, causal=True, window=2, query_offset=1, key_lengths=[3])
    for window, offset in [(torch.tensor(2), torch.tensor(1)), (2, torch.tensor(1))]:
        got = st.attention(q, k, v, causal=True, window=window, query_offset=offset,
                           key_lengths=torch.tensor([3], dtype=torch.int32))
        assert torch.equal(got, want)


@pytest.mark.parametrize("policy", [st.Softmax(), st.SSMax(0.5)])
def test_nan_query_gives_a_nan_row(policy):
    q, k, v = qkv(grad=False)
    q = q.clone()
    q[0, 1, 0, 0] = math.nan
    out = st.attention(q, k, v, policy=policy)
    assert bool(torch.isnan(out[0, 1, 0]).all())
    assert not bool(torch.isnan(out[0, 1, 1]).any()) and not bool(torch.isnan(out[0, 0]).any())
