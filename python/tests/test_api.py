"""Errors, thread-count independence, the nn module and replace_softmax."""

import math

import pytest
import torch

import ssmax_torch as st

import cases


def qkv(n_q=6, n_k=9, heads=4, kv_heads=2, d=8, dtype=torch.float64):
    return cases.inputs(n_q, n_k, {}, heads=heads, kv_heads=kv_heads, d=d, dtype=dtype)


@pytest.mark.parametrize("argument,make", [
    ("q", lambda q, k, v: dict(q=q.half())),
    ("q", lambda q, k, v: dict(q=q.to("meta"))),
    ("q", lambda q, k, v: dict(q=q[0])),
    ("q", lambda q, k, v: dict(q=[1.0])),
    ("k", lambda q, k, v: dict(k=k.float())),
    ("k", lambda q, k, v: dict(k=k.to("meta"))),
    ("v", lambda q, k, v: dict(v=v.float())),
    ("k", lambda q, k, v: dict(k=k[:, :, :1].expand(-1, -1, 3, -1))),  # 3 does not divide 4
    ("v", lambda q, k, v: dict(v=v[:, :5])),
    ("k", lambda q, k, v: dict(k=k[..., :5])),
    ("policy", lambda q, k, v: dict(policy="ssmax")),
    ("policy.s", lambda q, k, v: dict(policy=st.SSMax(torch.ones(3)))),
    ("policy.s", lambda q, k, v: dict(policy=st.SSMax(float("nan")))),
    ("policy.b", lambda q, k, v: dict(policy=st.SSMax(0.5, float("inf")))),
    ("policy.fixed_length", lambda q, k, v: dict(policy=st.SSMax(0.5, fixed_length=-2))),
    ("policy.train_length", lambda q, k, v: dict(policy=st.QwenLogN(1))),
    ("policy.floor_scale", lambda q, k, v: dict(policy=st.Llama4Temperature(0))),
    ("policy.beta", lambda q, k, v: dict(policy=st.Mistral(4, -1.0))),
    ("window", lambda q, k, v: dict(window=3)),  # needs causal
    ("window", lambda q, k, v: dict(window=0, causal=True)),
    ("query_offset", lambda q, k, v: dict(query_offset=-3)),
    ("scale", lambda q, k, v: dict(scale=-1.0)),
    ("key_lengths", lambda q, k, v: dict(key_lengths=[9, 10])),
    ("key_lengths", lambda q, k, v: dict(key_lengths=[9])),
    ("key_lengths", lambda q, k, v: dict(key_lengths=[1.5, 2.0])),
    ("attn_mask", lambda q, k, v: dict(attn_mask=torch.ones(6, 9))),
    ("attn_mask", lambda q, k, v: dict(attn_mask=torch.ones(5, 9, dtype=torch.bool))),
    ("cu_seqlens_k", lambda q, k, v: dict(q=q[:1], k=k[:1], v=v[:1], cu_seqlens_q=[0, 6])),
    ("cu_seqlens_q", lambda q, k, v: dict(q=q[:1], k=k[:1], v=v[:1], cu_seqlens_q=[0, 5],
                                          cu_seqlens_k=[0, 9])),
    ("cu_seqlens_k", lambda q, k, v: dict(q=q[:1], k=k[:1], v=v[:1], cu_seqlens_q=[0, 6],
                                          cu_seqlens_k=[0, 4, 9])),
    ("q", lambda q, k, v: dict(cu_seqlens_q=[0, 6], cu_seqlens_k=[0, 9])),  # batch 2
])
def test_errors_name_the_argument(argument, make):
    q, k, v = qkv()
    args = dict(q=q, k=k, v=v)
    args.update(make(q, k, v))
    with pytest.raises(ValueError) as info:
        st.attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)
    assert isinstance(info.value, st.ArgumentError)
    assert info.value.argument == argument, str(info.value)
    assert f"'{argument}'" in str(info.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_do_not_depend_on_thread_count(dtype):
    q, k, v = cases.inputs(300, 300, {}, heads=4, kv_heads=2, d=32, dtype=dtype,
                           requires_grad=True)
    s = torch.full((4,), 0.4, dtype=dtype, requires_grad=True)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out = st.attention(q, k, v, policy=st.SSMax(s), causal=True)
            grads = torch.autograd.grad(out.square().sum(), (q, k, v, s))
            results.append((out, *grads))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_module_trains_and_s_moves():
    torch.manual_seed(0)
    layer = st.ScalableSoftmaxAttention(32, 4, num_kv_heads=2, s_init=0.5, b_init=0.1)
    x = torch.randn(4, 24, 32)
    target = torch.roll(x, 1, dims=1)  # copy the previous token: attention can learn it
    s0 = layer.s.detach().clone()
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(layer(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert torch.all(layer.s.detach() != s0) and layer.b.grad is not None


def test_module_softmax_matches_torch_composition():
    torch.manual_seed(1)
    layer = st.ScalableSoftmaxAttention(16, 4, policy="softmax", dtype=torch.float64)
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    q = layer.q_proj(x).view(2, 10, 4, 4).transpose(1, 2)
    k = layer.k_proj(x).view(2, 10, 4, 4).transpose(1, 2)
    v = layer.v_proj(x).view(2, 10, 4, 4).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / 2.0
    logits = logits.masked_fill(torch.ones(10, 10, dtype=torch.bool).triu(1), -math.inf)
    want = layer.o_proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 10, 16))
    torch.testing.assert_close(layer(x), want, rtol=1e-10, atol=1e-12)


def test_replace_softmax_matches_softmax_at_training_length():
    torch.manual_seed(2)
    model = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True), 2).double()
    model.eval()
    x = torch.randn(3, 12, 16, dtype=torch.float64)
    pad = torch.zeros(3, 12, dtype=torch.bool)
    with torch.no_grad():
        want = model(x)
        st.replace_softmax(model, n_train=12)  # s log 12 = 1: SSMax = Softmax at n = 12
        assert isinstance(model.layers[0].self_attn, st.nn.SSMaxMultiheadAttention)
        got = model(x)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        # Padding changes n, so SSMax now differs from Softmax (and still runs).
        pad[0, 8:] = True
        assert not torch.allclose(model(x, src_key_padding_mask=pad)[0, :8], want[0, :8])


def test_gil_released_threads_run():
    import threading

    q, k, v = qkv(200, 200, d=32)
    out = []
    threads = [threading.Thread(target=lambda: out.append(st.attention(q, k, v)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(out[0], out[1])
