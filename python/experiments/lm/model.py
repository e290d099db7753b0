"""A small byte-level causal transformer whose attention is ssmax_torch.attention.

Pre-LayerNorm blocks (attention, then a 4x GELU MLP), tied input/output embeddings, no
dropout, RoPE on q and k (rotate-half form, base `rope_base`, all head dimensions rotated).
Past the training length RoPE is either used as trained ("plain": the rotation simply
continues) or with its base scaled for the evaluation ("scaled": base * r^(d/(d-2)),
r = evaluation length / training length, the NTK-aware rule), chosen per forward call.

Attention kinds (one per layer, per head parameters):
    softmax    m = 1
    ssmax      m = s_h log n, s learnable (or a fixed buffer: learn_s=False)
    ssmax_b    m = s_h log n + b_h, s and b learnable, b NOT clamped
n = p + 1 for the query at position p (causal), as the library computes it.

The library's SSMax policy requires s >= 0 and b >= 0 (m >= 0). When a learned b (or s) is
negative, this module computes the same function by folding m into the query
(q' = m q, then the library's Softmax policy), which is exact: softmax(m * scale * q.k).
Autograd then reaches s and b through torch. `fold_calls` counts such forwards.
"""

import math

import torch
import torch.nn.functional as F

import ssmax_torch


def rope_tables(length, head_dim, base):
    """cos, sin tables [length, head_dim / 2] for positions 0 .. length - 1."""
    inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x, cos, sin):
    """x [B, S, H, d] rotated by position (rotate-half pairing of dims i and i + d/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)


class Attention(torch.nn.Module):
    """Causal self-attention with a per-layer length policy (see the module doc)."""

    def __init__(self, dim, heads, kind, s_init, b_init=0.0, learn_s=True):
        super().__init__()
        self.heads, self.head_dim, self.kind = heads, dim // heads, kind
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.out = torch.nn.Linear(dim, dim, bias=False)
        self.s = self.b = None
        self.fold_calls = 0
        self.set_kind(kind, s_init, b_init, learn_s)

    def set_kind(self, kind, s_init=None, b_init=0.0, learn_s=True):
        """Switches the policy (used to turn a trained Softmax model into SSMax)."""
        if kind not in ("softmax", "ssmax", "ssmax_b"):
            raise ValueError(f"unknown attention kind {kind!r}")
        self.kind, self.s, self.b = kind, None, None
        if kind == "softmax":
            return
        s = torch.full((self.heads,), float(s_init))
        self.s = torch.nn.Parameter(s) if learn_s else torch.nn.Parameter(s, requires_grad=False)
        if kind == "ssmax_b":
            self.b = torch.nn.Parameter(torch.full((self.heads,), float(b_init)))

    def attend(self, q, k, v):
        if self.kind == "softmax":
            return ssmax_torch.attention(q, k, v, policy=ssmax_torch.Softmax(), causal=True)
        nonneg = bool(self.s.min() >= 0) and (self.b is None or bool(self.b.min() >= 0))
        if nonneg:
            policy = ssmax_torch.SSMax(self.s, self.b)
            return ssmax_torch.attention(q, k, v, policy=policy, causal=True)
        self.fold_calls += 1
        n = torch.arange(1, q.shape[1] + 1, dtype=q.dtype)
        m = n.log()[:, None] * self.s[None, :].to(q.dtype)
        if self.b is not None:
            m = m + self.b[None, :].to(q.dtype)
        q = q * m[None, :, :, None]
        return ssmax_torch.attention(q, k, v, policy=ssmax_torch.Softmax(), causal=True)

    def forward(self, x, cos, sin):
        batch, seq, dim = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.heads, self.head_dim).unbind(2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.out(self.attend(q, k, v.contiguous()).reshape(batch, seq, dim))


class Block(torch.nn.Module):
    def __init__(self, dim, heads, kind, s_init, b_init):
        super().__init__()
        self.ln1, self.ln2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, kind, s_init, b_init)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(),
                                       torch.nn.Linear(4 * dim, dim))

    def forward(self, x, cos, sin):
        x = x + self.attn(self.ln1(x), cos, sin)
        return x + self.mlp(self.ln2(x))


class ByteLM(torch.nn.Module):
    """Byte-level causal LM: tokens [B, S] (int64) -> logits [B, S, 256]."""

    def __init__(self, layers=4, dim=128, heads=4, kind="softmax", s_init=0.43, b_init=0.0,
                 train_length=128, rope_base=10000.0):
        super().__init__()
        self.embed = torch.nn.Embedding(256, dim)
        self.blocks = torch.nn.ModuleList(
            Block(dim, heads, kind, s_init, b_init) for _ in range(layers))
        self.ln = torch.nn.LayerNorm(dim)
        self.head_dim, self.train_length, self.rope_base = dim // heads, train_length, rope_base
        torch.nn.init.normal_(self.embed.weight, std=0.02)

    def attentions(self):
        return [blk.attn for blk in self.blocks]

    def rope_base_for(self, length, rope):
        """The RoPE base for a forward over `length` tokens ('plain' or 'scaled')."""
        if rope == "plain" or length <= self.train_length:
            return self.rope_base
        d = self.head_dim
        return self.rope_base * (length / self.train_length) ** (d / (d - 2))

    def forward(self, tokens, rope="plain"):
        seq = tokens.shape[1]
        cos, sin = rope_tables(seq, self.head_dim, self.rope_base_for(seq, rope))
        x = self.embed(tokens)
        for blk in self.blocks:
            x = blk(x, cos, sin)
        return F.linear(self.ln(x), self.embed.weight)


def parameter_groups(model, weight_decay):
    """AdamW groups: decay on matrices, none on norms, biases, embeddings' scale, s, b."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() == 2 and "embed" not in name else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def s_for_switch(train_length):
    """The paper's post-training choice: s = 1/log(n_train), so SSMax = Softmax at n_train."""
    return 1.0 / math.log(train_length)
