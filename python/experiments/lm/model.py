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

s and b take any finite value (b is often negative once trained): the library's SSMax
policy computes m for every sign and returns the gradients of s and b.
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

    def multiplier(self, n):
        """m = s log n (+ b) per head for the query rows that see n keys: [len(n), heads]."""
        m = n.log()[:, None] * self.s[None, :]
        return m + self.b[None, :] if self.b is not None else m

    def attend(self, q, k, v):
        if self.kind == "softmax":
            return ssmax_torch.attention(q, k, v, policy=ssmax_torch.Softmax(), causal=True)
        policy = ssmax_torch.SSMax(self.s, self.b)
        return ssmax_torch.attention(q, k, v, policy=policy, causal=True)

    def project(self, x, cos, sin):
        batch, seq, dim = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.heads, self.head_dim).unbind(2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def weights(self, x, cos, sin, rows):
        """The attention weights [B, heads, len(rows), S] of the queries at positions `rows`
        (1-D int64), in plain torch from q and k: softmax over the causal keys of
        m * q.k / sqrt(d), m as in attend(). The same function the library computes; used to
        read where the model looks (the needle test), not to train."""
        q, k, _ = self.project(x, cos, sin)
        logits = torch.einsum("bqhd,bkhd->bhqk", q[:, rows], k) / math.sqrt(self.head_dim)
        if self.kind != "softmax":
            m = self.multiplier((rows + 1).to(q.dtype)).to(q.dtype)  # n = p + 1 keys
            logits = logits * m.T[None, :, :, None]
        future = torch.arange(k.shape[1])[None, :] > rows[:, None]
        return logits.masked_fill(future, float("-inf")).softmax(-1)

    def forward(self, x, cos, sin):
        batch, seq, dim = x.shape
        q, k, v = self.project(x, cos, sin)
        return self.out(self.attend(q, k, v.contiguous()).reshape(batch, seq, dim))


class Block(torch.nn.Module):
    def __init__(self, dim, heads, kind, s_init, b_init):
        super().__init__()
        self.ln1, self.ln2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, kind, s_init, b_init)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(),
                                       torch.nn.Linear(4 * dim, dim))

    def forward(self, x, cos, sin, rows=None, maps=None):
        """rows, maps: when rows (query positions) is given, appends this layer's attention
        weights for those queries to the list `maps` (see Attention.weights)."""
        h = self.ln1(x)
        if rows is not None:
            maps.append(self.attn.weights(h, cos, sin, rows))
        x = x + self.attn(h, cos, sin)
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

    def forward(self, tokens, rope="plain", rows=None):
        """Logits; with `rows` (query positions, 1-D int64) also every layer's attention
        weights for those queries: (logits, [[B, heads, len(rows), S] per layer])."""
        seq = tokens.shape[1]
        cos, sin = rope_tables(seq, self.head_dim, self.rope_base_for(seq, rope))
        x, maps = self.embed(tokens), []
        for blk in self.blocks:
            x = blk(x, cos, sin, rows, maps)
        logits = F.linear(self.ln(x), self.embed.weight)
        return logits if rows is None else (logits, maps)


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
