"""A small causal character-level transformer trained twice on this machine's license
texts (/usr/share/common-licenses, present on every Debian system): once with Softmax
attention, once with Scalable-Softmax (learnable per-head s), both through
ssmax_torch.nn.ScalableSoftmaxAttention. Prints the training and validation losses.

    build/pyenv/bin/python python/examples/train_char_lm.py            # ~2-3 min, 2 cores
    build/pyenv/bin/python python/examples/train_char_lm.py --steps 1000 --block 256

A demonstration, not an experiment: one seed, a short run, absolute learned positions.
"""

import argparse
import glob
import math
import os
import time

import torch
import torch.nn.functional as F

import ssmax_torch


class Block(torch.nn.Module):
    def __init__(self, dim, heads, kv_heads, policy, s_init):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim)
        self.attn = ssmax_torch.nn.ScalableSoftmaxAttention(
            dim, heads, kv_heads, policy=policy, s_init=s_init, causal=True)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(),
                                       torch.nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CharLM(torch.nn.Module):
    def __init__(self, vocab, block, dim, layers, heads, kv_heads, policy, s_init):
        super().__init__()
        self.tokens = torch.nn.Embedding(vocab, dim)
        self.positions = torch.nn.Parameter(torch.randn(block, dim) * 0.02)
        self.blocks = torch.nn.ModuleList(
            Block(dim, heads, kv_heads, policy, s_init) for _ in range(layers))
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, idx):
        x = self.tokens(idx) + self.positions[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def load_text(pattern):
    parts = []
    for path in sorted(glob.glob(pattern)):
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
    if not parts:
        raise SystemExit(f"no text files match {pattern}")
    return "\n".join(parts)


def batches(data, block, batch, gen):
    starts = torch.randint(0, len(data) - block - 1, (batch,), generator=gen)
    x = torch.stack([data[s: s + block] for s in starts])
    y = torch.stack([data[s + 1: s + block + 1] for s in starts])
    return x, y


def train(policy, data_train, data_val, vocab, args):
    torch.manual_seed(args.seed)
    model = CharLM(vocab, args.block, args.dim, args.layers, args.heads, args.kv_heads, policy,
                   1.0 / math.log(args.block))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in range(1, args.steps + 1):
        x, y = batches(data_train, args.block, args.batch, gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.log_every == 0 or step == args.steps:
            print(f"  {policy:>7} step {step:>5}  train loss {loss.item():.3f}  "
                  f"({time.time() - start:.0f} s)", flush=True)
    model.eval()
    val_gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
                  for x, y in (batches(data_val, args.block, args.batch, val_gen)
                               for _ in range(20))]
    s = [] if policy == "softmax" else [
        [round(v, 3) for v in blk.attn.s.detach().tolist()] for blk in model.blocks]
    return sum(losses) / len(losses), s


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--text", default="/usr/share/common-licenses/*")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--log-every", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    text = load_text(args.text)
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(data))
    print(f"{len(text)} characters, vocabulary {len(chars)}, {args.threads} threads")
    results = {}
    for policy in ("softmax", "ssmax"):
        results[policy] = train(policy, data[:split], data[split:], len(chars), args)
    for policy, (val, s) in results.items():
        print(f"{policy:>7}: validation loss {val:.3f}" + (f"  learned s per layer {s}" if s else ""))


if __name__ == "__main__":
    main()
