"""ssmax_torch.attention: the library's attention operator as a differentiable torch op."""

import functools
import math

import torch

from . import _C
from .errors import fail, integer, real
from .policies import Policy, Softmax

_DTYPES = (torch.float32, torch.float64)


def _check_tensor(t, name, dims, dtype=None):
    if not isinstance(t, torch.Tensor):
        fail("attention", name, f"must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        fail("attention", name, f"must be on the CPU, got device {t.device}")
    if dtype is None and t.dtype not in _DTYPES:
        fail("attention", name, f"must be float32 or float64, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        fail("attention", name, f"must have q's dtype {dtype}, got {t.dtype}")
    if t.dim() != dims:
        fail("attention", name, f"must have {dims} dimensions [B, S, H, d], got shape "
             f"{list(t.shape)}")


def _head_contiguous(t):
    """The kernels take any strides whose head dimension is contiguous; others are copied."""
    return t if t.stride(-1) == 1 or t.size(-1) == 1 else t.contiguous()


def _index_tensor(x, name, count):
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        fail("attention", name, f"must be a 1-D tensor or list of 64-bit integers ({e})")
    if t.device.type != "cpu":
        fail("attention", name, f"must be on the CPU, got device {t.device}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        fail("attention", name, f"must hold integers, got {t.dtype}")
    if t.dim() != 1 or (count is not None and t.numel() != count):
        want = "" if count is None else f" of {count} entries"
        fail("attention", name, f"must be a 1-D tensor{want}, got shape {list(t.shape)}")
    return t.to(torch.int64).contiguous()


def _mask_tensor(mask, shape):
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        fail("attention", "attn_mask", "must be a torch.bool tensor (True = may attend)")
    if mask.device.type != "cpu":
        fail("attention", "attn_mask", f"must be on the CPU, got device {mask.device}")
    if mask.dim() > 4:
        fail("attention", "attn_mask", f"must have at most 4 dimensions, got {mask.dim()}")
    try:
        mask = mask.expand(shape)
    except RuntimeError:
        fail("attention", "attn_mask", f"has shape {list(mask.shape)}, not broadcastable to "
             f"[B, H, n_q, n_k] = {list(shape)}")
    return mask if mask.stride(3) == 1 else mask.contiguous()


class _SecondOrder(torch.autograd.Function):
    """Passes a backward's results through, attached to the tensors they depend on, with a
    backward that raises: differentiating them fails instead of giving 0."""

    @staticmethod
    def forward(ctx, results, *sources):
        return tuple(None if r is None else r.clone() for r in results)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("ssmax_torch.attention is not twice differentiable (a gradient "
                           "taken with create_graph=True was differentiated)")


def _once_differentiable(backward):
    """Like torch.autograd.function.once_differentiable, but the error also reaches
    torch.autograd.grad(..., inputs) (torch's DelayedError hangs off detached aliases, which
    autograd prunes from the graph, so a gradient-penalty term is silently dropped)."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        create_graph = torch.is_grad_enabled()
        with torch.no_grad():
            results = backward(ctx, *grads)
        sources = [t for t in ctx.saved_tensors + grads if t is not None and t.requires_grad]
        if not create_graph or not sources:
            return results
        return _SecondOrder.apply(results, *sources)

    return wrapper


class _Attention(torch.autograd.Function):
    """Forward: ssmax::attention (fused); backward: ssmax::attention_backward (fused).

    lse is returned as an output autograd tracks (not marked non-differentiable, which
    would drop a loss term built from it without a word) but has no gradient: the backward
    raises when the loss depends on it."""

    @staticmethod
    def forward(ctx, q, k, v, s, b, spec):
        ctx.empty = q.numel() == 0 or k.numel() == 0
        if ctx.empty:  # no row, or no key: every row sees no key (zeros, lse -inf)
            out = q.new_zeros(q.shape)
            lse = q.new_full((q.shape[0], q.shape[2], q.shape[1]), -math.inf)
        else:
            out, lse = _C.forward(q, k, v, spec)
        ctx.save_for_backward(q, k, v, out, lse, s, b)
        ctx.spec = spec
        return out, lse

    @staticmethod
    @_once_differentiable
    def backward(ctx, dout, dlse):
        if dlse is not None and bool((dlse != 0).any()):
            raise RuntimeError("ssmax_torch.attention: the lse returned by return_lse=True is "
                               "not differentiable; detach it (lse.detach()) before using it "
                               "in a loss")
        q, k, v, out, lse, s, b = ctx.saved_tensors
        need = ctx.needs_input_grad
        if ctx.empty:
            return tuple(None if t is None or not n else torch.zeros_like(t)
                         for t, n in zip((q, k, v, s, b), need)) + (None,)
        dq, dk, dv, ds, db = _C.backward(q, k, v, out, dout.contiguous(), lse, ctx.spec,
                                         bool(need[3] or need[4]))
        return dq, dk, dv, ds if need[3] else None, db if need[4] else None, None


def _check_empty_shapes(q, k, v):
    """The shape checks the library makes, for calls with a zero-size dimension (which
    never reach it)."""
    batch, _, heads, d = q.shape
    if d == 0:
        fail("attention", "q", f"must have a head dimension d >= 1, got shape {list(q.shape)}")
    kv_heads = k.shape[2]
    if k.shape[0] != batch or k.shape[3] != d or (kv_heads == 0) != (heads == 0) or \
            (kv_heads and heads % kv_heads):
        fail("attention", "k", f"has shape {list(k.shape)}, not [B, n_k, H_kv, d] with H_kv "
             f"dividing H for q's shape {list(q.shape)}")
    if v.shape != k.shape:
        fail("attention", "v", f"must have k's shape {list(k.shape)}, got {list(v.shape)}")


def attention(q, k, v, *, policy=None, causal=False, window=None, key_lengths=None,
              cu_seqlens_q=None, cu_seqlens_k=None, attn_mask=None, scale=None,
              query_offset=None, return_lse=False):
    """Multi-head attention with a length policy, on CPU tensors, differentiable.

    q: [B, n_q, H, d]; k, v: [B, n_k, H_kv, d] with H_kv dividing H (GQA / MQA); float32
    or float64, all the same dtype. Returns out [B, n_q, H, d] (and, with return_lse, the
    per-row log-sum-exp of the scaled logits [B, H, n_q], -inf for rows that see no key;
    not differentiable: a loss that depends on it raises in backward). Not twice
    differentiable. B, n_q or H = 0 give empty results; n_k = 0 zeros (lse -inf).

    policy: Softmax() (default), SSMax(s, b, fixed_length), QwenLogN, Llama4Temperature,
        Mistral (ssmax_torch.policies).
    causal: key position <= query position. window: causal sliding window of that many keys.
    key_lengths: [B] integers, keys at positions >= key_lengths[b] are padding.
    cu_seqlens_q, cu_seqlens_k: [S + 1] cumulative offsets of S packed sequences
        (FlashAttention varlen); q, k, v then hold batch 1 ([1, total, H, d] or
        [total, H, d]); positions, causality and n restart at each sequence.
    attn_mask: bool tensor broadcastable to [B, H, n_q, n_k], True = may attend (indices
        are tensor rows, also with varlen).
    scale: logit scale, a number (finite, >= 0), default 1/sqrt(d); it gets no gradient, so
        a tensor that requires grad is refused. query_offset: position of query 0 (default:
        queries at the end of the keys, the KV-cache convention).

    Positions: key j of a sequence is at position j, query i at query_offset + i; n is the
    number of keys a row sees after every mask; rows that see no key output zeros.
    Tensors whose last dimension is not contiguous are copied; other strides are read
    in place. Bad arguments raise ssmax_torch.ArgumentError (a ValueError) naming them.
    """
    policy = Softmax() if policy is None else policy
    if not isinstance(policy, Policy):
        fail("attention", "policy", f"must be an ssmax_torch policy (Softmax(), SSMax(...), "
             f"...), got {type(policy).__name__}")
    packed = cu_seqlens_q is not None or cu_seqlens_k is not None
    unbatched = packed and isinstance(q, torch.Tensor) and q.dim() == 3
    if unbatched:
        q, k, v = (t.unsqueeze(0) if isinstance(t, torch.Tensor) else t for t in (q, k, v))
    _check_tensor(q, "q", 4)
    _check_tensor(k, "k", 4, q.dtype)
    _check_tensor(v, "v", 4, q.dtype)

    spec = _C.CallSpec()
    s, b = policy._tensors(q.shape[2])
    policy._fill(spec, s, b)
    if not isinstance(causal, bool):
        fail("attention", "causal", f"must be a bool, got {type(causal).__name__}")
    spec.causal = causal
    spec.window = 0 if window is None else integer("attention", "window", window)
    if window is not None and spec.window < 1:
        fail("attention", "window", f"must be >= 1 (None: no window), got {window}")
    spec.query_offset = -1 if query_offset is None else integer("attention", "query_offset",
                                                                query_offset)
    if query_offset is not None and spec.query_offset < 0:
        fail("attention", "query_offset", f"must be >= 0 (None: automatic), got {query_offset}")
    sequences = q.shape[0]
    if packed:
        if cu_seqlens_q is None or cu_seqlens_k is None:
            fail("attention", "cu_seqlens_k" if cu_seqlens_k is None else "cu_seqlens_q",
                 "must be given together with the other cu_seqlens")
        spec.cu_seqlens_q = _index_tensor(cu_seqlens_q, "cu_seqlens_q", None)
        sequences = spec.cu_seqlens_q.numel() - 1
        if sequences < 1:
            fail("attention", "cu_seqlens_q", "must hold at least 2 entries")
        spec.cu_seqlens_k = _index_tensor(cu_seqlens_k, "cu_seqlens_k", sequences + 1)
    if key_lengths is not None:
        spec.key_lengths = _index_tensor(key_lengths, "key_lengths", sequences)
    if attn_mask is not None:
        spec.allowed = _mask_tensor(attn_mask, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
    if scale is not None:
        spec.scale = real("attention", "scale", scale)

    if q.numel() == 0 or k.numel() == 0:
        _check_empty_shapes(q, k, v)
    out, lse = _Attention.apply(_head_contiguous(q), _head_contiguous(k), _head_contiguous(v),
                                s, b, spec)
    if unbatched:
        out, lse = out.squeeze(0), lse.squeeze(0)
    return (out, lse) if return_lse else out
