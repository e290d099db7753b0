"""Attention in plain torch ops, float64: the oracle the tests compare ssmax_torch with.

Positions: key j of a sequence is at position j; query i at query_offset + i, with the
automatic offset putting a sequence's queries at the end of ITS OWN keys:
max(0, L_b - n_q), L_b = key_lengths[b] when given, else n_k. n = keys a row sees after
every mask; m = the policy's multiplier(n, position, head); rows that see no key output 0.
"""

import math

import torch

import ssmax_torch as st


def multiplier(policy, n, pos, heads):
    """m for rows with visible counts n and positions pos, both [B, H, n_q] (float64)."""
    if isinstance(policy, st.Softmax):
        return torch.ones_like(n)
    if isinstance(policy, st.SSMax):
        s = torch.as_tensor(policy.s, dtype=torch.float64).reshape(-1).expand(heads)
        b = torch.zeros(heads, dtype=torch.float64) if policy.b is None else \
            torch.as_tensor(policy.b, dtype=torch.float64).reshape(-1).expand(heads)
        length = torch.full_like(n, policy.fixed_length) if policy.fixed_length else n
        return s[None, :, None] * torch.log(length.clamp(min=1)) + b[None, :, None]
    if isinstance(policy, st.QwenLogN):
        return (torch.log(pos + 1) / math.log(policy.train_length)).clamp(min=1)
    if isinstance(policy, st.Llama4Temperature):
        return policy.attn_scale * torch.log1p(torch.floor((pos + 1) / policy.floor_scale)) + 1
    if isinstance(policy, st.Mistral):
        return 1 + policy.beta * torch.log1p(torch.floor(pos / policy.original_length))
    raise TypeError(policy)


def dense(q, k, v, policy, causal=False, window=None, key_lengths=None, attn_mask=None,
          scale=None, query_offset=None):
    """One batch of sequences. q [B, n_q, H, d], k, v [B, n_k, H_kv, d] -> (out, lse)."""
    batch, n_q, heads, d = q.shape
    n_k = k.shape[1]
    group = heads // k.shape[2]
    kh = k.repeat_interleave(group, dim=2).transpose(1, 2)  # [B, H, n_k, d]
    vh = v.repeat_interleave(group, dim=2).transpose(1, 2)
    qh = q.transpose(1, 2)  # [B, H, n_q, d]
    scale = 1 / math.sqrt(d) if scale is None else scale
    z = scale * qh @ kh.transpose(-1, -2)  # [B, H, n_q, n_k]

    lengths = torch.full((batch,), n_k) if key_lengths is None else torch.as_tensor(key_lengths)
    if query_offset is None:
        offset = (lengths - n_q).clamp(min=0)
    else:
        offset = torch.full((batch,), query_offset)
    qpos = (offset[:, None] + torch.arange(n_q)[None, :]).to(torch.float64)  # [B, n_q]
    kpos = torch.arange(n_k, dtype=torch.float64)
    visible = (kpos[None, None, None, :] < lengths[:, None, None, None]).expand(
        batch, heads, n_q, n_k)
    if causal:
        visible = visible & (kpos[None, None, None, :] <= qpos[:, None, :, None])
    if window is not None:
        visible = visible & (kpos[None, None, None, :] > qpos[:, None, :, None] - window)
    if attn_mask is not None:
        visible = visible & attn_mask
    n = visible.sum(-1).to(torch.float64)  # [B, H, n_q]
    pos = qpos[:, None, :].expand(batch, heads, n_q)
    m = multiplier(policy, n, pos, heads)
    logits = (m[..., None] * z).masked_fill(~visible, -math.inf)
    lse = torch.logsumexp(logits, -1)
    weights = torch.where(visible, torch.exp(logits - lse[..., None].clamp(min=-1e300)),
                          torch.zeros_like(logits))
    out = (weights @ vh).transpose(1, 2)  # [B, n_q, H, d]
    return out, lse


def attention(q, k, v, policy, causal=False, window=None, key_lengths=None, cu_seqlens_q=None,
              cu_seqlens_k=None, attn_mask=None, scale=None, query_offset=None):
    """As ssmax_torch.attention (4-D tensors), returning (out, lse)."""
    if cu_seqlens_q is None:
        return dense(q, k, v, policy, causal, window, key_lengths, attn_mask, scale, query_offset)
    outs, lses = [], []
    for seq in range(len(cu_seqlens_q) - 1):
        qb, qe = int(cu_seqlens_q[seq]), int(cu_seqlens_q[seq + 1])
        kb, ke = int(cu_seqlens_k[seq]), int(cu_seqlens_k[seq + 1])
        mask = None if attn_mask is None else attn_mask.expand(
            1, q.shape[2], q.shape[1], k.shape[1])[:, :, qb:qe, kb:ke]
        lengths = None if key_lengths is None else [int(key_lengths[seq])]
        out, lse = dense(q[:, qb:qe], k[:, kb:ke], v[:, kb:ke], policy, causal, window,
                         lengths, mask, scale, query_offset)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, 1), torch.cat(lses, 2)
