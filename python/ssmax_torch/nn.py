"""Modules: a multi-head attention layer with learnable per-head s (and b), and
replace_softmax, which swaps the Softmax of a model's torch.nn.MultiheadAttention layers
for Scalable-Softmax."""

import math
import warnings

import torch
import torch.nn.functional as F

from .errors import constant_tensor, fail, finite, integer, real
from .functional import attention
from .policies import SSMax, Softmax


class ScalableSoftmaxAttention(torch.nn.Module):
    """Multi-head self-attention with Q/K/V/O projections and SSMax (or Softmax) scores.

    x [B, S, embed_dim] -> [B, S, embed_dim]. num_kv_heads < num_heads gives grouped-query
    attention (it must divide num_heads). policy "ssmax": m = s_h log n + b_h with a
    learnable per-head s (initialised to s_init) and, when b_init is not None, a learnable
    per-head b; "softmax": plain softmax (the same module as a baseline). s and b are used
    as trained, any sign (a negative m on short rows is allowed). bias: the projections' bias.
    causal, window, scale: as ssmax_torch.attention (scale is a number: a tensor that
    requires grad is refused, the module computes no gradient for it). The computation
    runs in the parameters' dtype (float32 or float64) on the CPU.
    """

    def __init__(self, embed_dim, num_heads, num_kv_heads=None, *, s_init=0.43, b_init=None,
                 policy="ssmax", bias=False, causal=True, window=None, scale=None,
                 device=None, dtype=None):
        super().__init__()
        name = "ScalableSoftmaxAttention"
        embed_dim = integer(name, "embed_dim", embed_dim)
        num_heads = integer(name, "num_heads", num_heads)
        num_kv_heads = num_heads if num_kv_heads is None else integer(name, "num_kv_heads",
                                                                      num_kv_heads)
        if embed_dim < 1:
            fail(name, "embed_dim", f"must be >= 1, got {embed_dim}")
        if num_heads < 1 or embed_dim % num_heads:
            fail("ScalableSoftmaxAttention", "num_heads", f"must divide embed_dim ({embed_dim})")
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            fail("ScalableSoftmaxAttention", "num_kv_heads", f"must divide num_heads ({num_heads})")
        if policy not in ("ssmax", "softmax"):
            fail("ScalableSoftmaxAttention", "policy", f"must be 'ssmax' or 'softmax', got {policy!r}")
        if policy == "ssmax":
            s_init = finite(name, "s_init", s_init)
            b_init = None if b_init is None else finite(name, "b_init", b_init)
        scale = None if scale is None else real(name, "scale", scale)
        kw = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.causal, self.window, self.scale, self.policy = causal, window, scale, policy
        self.q_proj = torch.nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.k_proj = torch.nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=bias, **kw)
        self.v_proj = torch.nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=bias, **kw)
        self.o_proj = torch.nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.s = self.b = None
        if policy == "ssmax":
            self.s = torch.nn.Parameter(torch.full((num_heads,), float(s_init), **kw))
            if b_init is not None:
                self.b = torch.nn.Parameter(torch.full((num_heads,), float(b_init), **kw))

    def length_policy(self):
        """The policy of the next forward (its s and b carry autograd)."""
        if self.policy == "softmax":
            return Softmax()
        return SSMax(self.s, self.b)

    def forward(self, x, key_lengths=None, attn_mask=None):
        """x [B, S, embed_dim]; key_lengths [B] and attn_mask (bool, True = may attend) as in
        ssmax_torch.attention."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[2] != self.embed_dim:
            fail("ScalableSoftmaxAttention", "x", f"must be a tensor [B, S, embed_dim="
                 f"{self.embed_dim}], got {list(x.shape) if isinstance(x, torch.Tensor) else x}")
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim)
        out = attention(q, k, v, policy=self.length_policy(), causal=self.causal,
                        window=self.window, key_lengths=key_lengths, attn_mask=attn_mask,
                        scale=self.scale)
        return self.o_proj(out.reshape(batch, seq, self.embed_dim))


def _allowed_from_torch_masks(attn_mask, key_padding_mask, batch, heads, n_q, n_k):
    """torch.nn.MultiheadAttention's masks (bool True = masked out, or float additive with
    only 0 and -inf) as one bool 'may attend' mask broadcastable to [B, H, n_q, n_k]."""

    def allowed(mask, name):
        constant_tensor("SSMaxMultiheadAttention", name, mask)
        if mask.dtype == torch.bool:
            return ~mask
        if not bool(torch.all((mask == 0) | torch.isneginf(mask))):
            fail("SSMaxMultiheadAttention", name,
                 "holds additive biases other than 0 and -inf, which SSMax cannot apply")
        return mask == 0

    result = None
    if attn_mask is not None:
        a = allowed(attn_mask, "attn_mask")
        result = a.view(batch, heads, n_q, n_k) if a.dim() == 3 else a
    if key_padding_mask is not None:
        p = allowed(key_padding_mask, "key_padding_mask").view(batch, 1, 1, n_k)
        result = p if result is None else result & p
    return result


class SSMaxMultiheadAttention(torch.nn.Module):
    """A torch.nn.MultiheadAttention whose Softmax is replaced by SSMax (see replace_softmax).

    Uses the wrapped module's projections (its parameters, shared, not copied) and takes
    the same forward arguments. Limits: no attention weights (returns (out, None) whatever
    need_weights says), no attention dropout, float masks only with 0 / -inf entries and
    not requiring grad (they have no gradient here);
    rows whose keys are all masked output 0 (torch gives NaN).
    """

    def __init__(self, mha, s, b=None, learnable=False):
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            fail("replace_softmax", "model", "holds a MultiheadAttention with kdim/vdim != "
                 "embed_dim, add_bias_kv or add_zero_attn, which replace_softmax does not support")
        self.mha = mha
        self.batch_first = mha.batch_first
        # Keeps torch.nn.TransformerEncoder(Layer)'s fused inference path, which reads the
        # projections directly and would bypass this module, switched off.
        self._qkv_same_embed_dim = False
        heads = mha.num_heads
        make = torch.nn.Parameter if learnable else (lambda t: t)
        like = {"dtype": mha.out_proj.weight.dtype, "device": mha.out_proj.weight.device}
        s = finite("replace_softmax", "s", s)
        b = None if b is None else finite("replace_softmax", "b", b)
        s_t = make(torch.full((heads,), s, **like))
        b_t = None if b is None else make(torch.full((heads,), b, **like))
        if learnable:
            self.s, self.b = s_t, b_t
        else:
            self.register_buffer("s", s_t)
            self.register_buffer("b", b_t)
        self._warned_dropout = False

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True):
        mha = self.mha
        if mha.dropout > 0 and self.training and not self._warned_dropout:
            warnings.warn("ssmax_torch: attention dropout is not applied by SSMaxMultiheadAttention")
            self._warned_dropout = True
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n_q, batch, embed = query.shape  # [L, N, E] from here on
        n_k = key.shape[0]
        heads = mha.num_heads
        head_dim = embed // heads
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
        b_q = b_k = b_v = None
        if mha.in_proj_bias is not None:
            b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).transpose(0, 1).reshape(batch, n_q, heads, head_dim)
        k = F.linear(key, w_k, b_k).transpose(0, 1).reshape(batch, n_k, heads, head_dim)
        v = F.linear(value, w_v, b_v).transpose(0, 1).reshape(batch, n_k, heads, head_dim)
        allowed = _allowed_from_torch_masks(attn_mask, key_padding_mask, batch, heads, n_q, n_k)
        out = attention(q, k, v, policy=SSMax(self.s, self.b), attn_mask=allowed)
        out = F.linear(out.reshape(batch, n_q, embed), mha.out_proj.weight, mha.out_proj.bias)
        out = out.transpose(0, 1)  # [L, N, E]
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def replace_softmax(model, s=None, *, n_train=None, b=None, learnable=False):
    """Replaces, in place, every torch.nn.MultiheadAttention of `model` (the module itself
    included) by an SSMaxMultiheadAttention sharing its weights, and returns the model.

    s: the SSMax scale for every head; default 1/log(n_train), which makes SSMax equal to
    Softmax at the training length n_train (the paper's "replace Softmax in a trained
    model" case), so give n_train or s. learnable: make s (and b) trainable per head.
    Only torch.nn.MultiheadAttention is recognised: attention written with explicit torch
    ops (most Hugging Face models) cannot be found generically; use
    ScalableSoftmaxAttention or ssmax_torch.attention there. See SSMaxMultiheadAttention
    for the limits of the replacement.
    """
    if s is None:
        if n_train is None or n_train < 2:
            fail("replace_softmax", "s", "must be given, or n_train >= 2 (s = 1/log(n_train))")
        s = 1.0 / math.log(n_train)
    s = finite("replace_softmax", "s", s)
    b = None if b is None else finite("replace_softmax", "b", b)
    if isinstance(model, torch.nn.MultiheadAttention):
        return SSMaxMultiheadAttention(model, s, b, learnable)
    for name, child in list(model.named_children()):
        if isinstance(child, torch.nn.MultiheadAttention):
            setattr(model, name, SSMaxMultiheadAttention(child, s, b, learnable))
        else:
            replace_softmax(child, s, b=b, learnable=learnable)
    return model
