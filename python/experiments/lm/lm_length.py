#!/usr/bin/env python3
"""The paper's language-model result, small: byte-level transformers on the `fortunes` text,
Softmax against Scalable-Softmax, trained at a short context and evaluated up to 8x (16x)
beyond it. Writes runs/*.json, tables, plots and report.md under --out (see report.py).

    build/pyenv/bin/python python/experiments/lm/lm_length.py           # default, ~11-12 min
    build/pyenv/bin/python python/experiments/lm/lm_length.py --long    # longer training
    ... --x16    evaluates to 16x the training context;  --smoke  the CI smoke size
(build/pyenv: scripts/python-test.sh builds ssmax_torch there.) The arguments are checked
before anything is written; the run then replaces its own output files under --out.

Variants: softmax; ssmax (learnable s per head); ssmax_b (learnable s and b, b unclamped);
switch (the trained softmax model with SSMax, s = 1/log(n_train), no training);
switch_ft (the same, then a short fine-tune with s learnable); softmax_ft (the control
for switch_ft: the trained softmax model fine-tuned the same steps on the same batches,
staying Softmax).

Determinism: each (variant, seed) runs in its own process with one torch thread (so the
library's kernels run single-threaded too), torch.manual_seed(seed) for the weights and a
torch.Generator seeded from the seed for the batches; evaluation windows and needles are
fixed and shared by every run. Runs with the same seed and sizes give identical numbers;
--jobs only changes how many run at once.
"""

import argparse
import copy
import json
import math
import multiprocessing
import os
import shutil
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import corpus  # noqa: E402
from model import ByteLM, parameter_groups, s_for_switch  # noqa: E402

PRESETS = {
    # steps, batch, fine-tune steps, validation windows, needle trials, layers, dim, heads,
    # seeds; training needles: fraction of windows, pairs per window, most capitals per code
    "default": dict(steps=500, batch=16, ft_steps=90, val_windows=16, needle_trials=16,
                    layers=4, dim=128, heads=4, seeds=3, needle_fraction=0.5, needle_pairs=1,
                    needle_code_max=5),
    "long": dict(steps=2000, batch=32, ft_steps=300, val_windows=32, needle_trials=32,
                 layers=4, dim=128, heads=4, seeds=3, needle_fraction=0.5, needle_pairs=1,
                 needle_code_max=5),
    "smoke": dict(steps=40, batch=8, ft_steps=8, val_windows=2, needle_trials=2,
                  layers=2, dim=64, heads=4, seeds=1, needle_fraction=0.5, needle_pairs=2,
                  needle_code_max=8),
}
TRAINED = ("softmax", "ssmax", "ssmax_b")
ALL_VARIANTS = ("softmax", "ssmax", "ssmax_b", "softmax_ft", "switch", "switch_ft")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def lr_at(step, steps, peak):
    """Linear warm-up over 5% of the steps, then cosine decay to 10% of the peak."""
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train(model, data, cfg, seed, steps, tag, offset=0):
    """AdamW training; returns the loss curve [(step, mean loss over the last log_every)]."""
    gen = torch.Generator().manual_seed(1000003 * seed + 17 + offset)
    opt = torch.optim.AdamW(parameter_groups(model, 0.1), lr=cfg.lr, betas=(0.9, 0.95))
    curve, window, t0 = [], [], time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, cfg.lr)
        x = corpus.train_batch(data, cfg.batch, cfg.ctx, gen, cfg.needle_fraction,
                               cfg.needle_pairs, cfg.needle_code_max)
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        window.append(loss.item())
        recent = sum(window) / len(window)
        if len(window) == cfg.log_every or step == steps - 1:
            curve.append((offset + step + 1, sum(window) / len(window)))
            window = []
        if (step + 1) % max(1, steps // 5) == 0 or step == steps - 1:
            log(f"lm: [{tag}] step {step + 1}/{steps} loss {recent:.3f} "
                f"({time.time() - t0:.0f} s)")
    return curve


@torch.no_grad()
def token_losses(model, x, rope, chunk=4, rows=None, span=None):
    """Per-token cross-entropy [count, length] and argmax hits for windows x [count, L+1].
    With query positions `rows` and a key slice `span`, also the attention weight each
    layer's heads put on the span from those queries: [count, layers, heads, len(rows)]."""
    losses, hits, on_span = [], [], []
    for i in range(0, x.shape[0], chunk):
        part = x[i:i + chunk]
        logits = model(part[:, :-1], rope=rope, rows=rows)
        if rows is not None:
            logits, maps = logits
            on_span.append(torch.stack([w[..., span].sum(-1) for w in maps], 1))
        target = part[:, 1:]
        losses.append(F.cross_entropy(logits.transpose(1, 2), target, reduction="none"))
        hits.append(logits.argmax(-1) == target)
    if rows is None:
        return torch.cat(losses), torch.cat(hits)
    return torch.cat(losses), torch.cat(hits), torch.cat(on_span)


def evaluate(model, val, cfg):
    """Validation loss per position (to cfg.eval_mult x ctx) and the needle test, for both
    RoPE modes; plus the learned s and b."""
    model.eval()
    longest = cfg.ctx * cfg.eval_mult
    lengths = [cfg.ctx * 2 ** i for i in range(int(math.log2(cfg.eval_mult)) + 1)]
    windows = corpus.validation_windows(val, cfg.val_windows, longest)
    result = {"lengths": lengths, "position_loss": {}, "needle": {}}
    for rope in ("plain", "scaled"):
        per_pos, _ = token_losses(model, windows, rope)
        result["position_loss"][rope] = per_pos.mean(0).tolist()
        needle = {}
        for length in lengths:
            x, sl, span = corpus.needle_windows(val, cfg.needle_trials, length,
                                                seed=7919 + length)
            rows = torch.arange(sl.start, sl.stop)
            loss, hit, on_span = token_losses(model, x, rope, rows=rows, span=span)
            # Attention on the first needle from the queries that predict the recalled
            # letters: per layer, the largest weight any head puts on it (mean over the
            # queries and trials); uniform attention would put NEEDLE_LEN / n there.
            per_layer = on_span.amax(2).mean((0, 2))
            needle[str(length)] = {"loss": loss[:, sl].mean().item(),
                                   "accuracy": hit[:, sl].float().mean().item(),
                                   "attention": per_layer.tolist(),
                                   "uniform": (corpus.NEEDLE_LEN / (rows + 1.0)).mean().item()}
        result["needle"][rope] = needle
    atts = model.attentions()
    result["s"] = [a.s.tolist() if a.s is not None else None for a in atts]
    result["b"] = [a.b.tolist() if a.b is not None else None for a in atts]
    model.train()
    return result


def new_model(cfg, kind):
    return ByteLM(cfg.layers, cfg.dim, cfg.heads, kind, s_init=cfg.s_init, b_init=0.0,
                  train_length=cfg.ctx)


def run_job(args):
    """One trained variant and seed (softmax also yields switch and switch_ft)."""
    cfg, kind, seed = args
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    train_data, val, _ = corpus.load_corpus(cfg.corpus_dir)
    torch.manual_seed(seed)
    model = new_model(cfg, kind)
    t0, cpu0 = time.time(), time.process_time()
    curve = train(model, train_data, cfg, seed, cfg.steps, f"{kind} seed {seed}")
    out = [dict(variant=kind, seed=seed, curve=curve, train_s=time.time() - t0,
                **evaluate(model, val, cfg))]
    if kind == "softmax":
        # The control for switch_ft: the same extra steps on the same batches, still Softmax.
        control = copy.deepcopy(model)
        t1 = time.time()
        ft = train(control, train_data, cfg, seed, cfg.ft_steps, f"softmax_ft seed {seed}",
                   offset=cfg.steps)
        out.append(dict(variant="softmax_ft", seed=seed, curve=ft, train_s=time.time() - t1,
                        **evaluate(control, val, cfg)))
        del control
        for att in model.attentions():
            att.set_kind("ssmax", s_for_switch(cfg.ctx), learn_s=False)
        out.append(dict(variant="switch", seed=seed, curve=[], train_s=0.0,
                        **evaluate(model, val, cfg)))
        for att in model.attentions():
            att.s.requires_grad_(True)
        t1 = time.time()
        ft = train(model, train_data, cfg, seed, cfg.ft_steps, f"switch_ft seed {seed}",
                   offset=cfg.steps)
        out.append(dict(variant="switch_ft", seed=seed, curve=ft, train_s=time.time() - t1,
                        **evaluate(model, val, cfg)))
    for r in out:
        r["wall_s"], r["cpu_s"] = time.time() - t0, time.process_time() - cpu0
    return out


# What lm_length.py and report.py write under --out; only these are removed before a run.
OUTPUT_DIRS = ("runs", "data")
OUTPUT_FILES = ("meta.json", "results.json", "report.md", "train_loss.png",
                "position_loss_plain.png", "position_loss_scaled.png", "needle_plain.png",
                "needle_scaled.png", "needle_attention_plain.png", "needle_attention_scaled.png")


def min_ctx(code_max):
    """The shortest training context that fits a training needle pair of `code_max` capitals
    (corpus.train_batch: the first copy, code_max + 2 bytes, starts in the first half; the
    second starts at least 4 bytes after the first ends and ends inside the window) and the
    needle test at L = ctx (corpus.needle_windows). With size = code_max + 2 the training
    windows need ctx // 2 >= size + 1 and ctx - ctx // 2 >= size + 3: ctx >= 2 code_max + 9."""
    return max(2 * code_max + 9, 2 * corpus.NEEDLE_CODE + 9)


def _check_out(p, out):
    """--out must be a folder that can be made or reused: a new or empty folder, or one that
    holds an earlier run's output (recognised by its meta.json or runs/). A new one is made
    here (empty)."""
    if os.path.exists(out):
        if not os.path.isdir(out):
            p.error(f"--out {out}: exists and is not a folder")
        entries = os.listdir(out)
        ours = "meta.json" in entries or "runs" in entries
        if entries and not ours:
            p.error(f"--out {out}: the folder holds other files and no earlier lm output; "
                    "give a new or empty folder (the run replaces its output files there)")
        if not os.access(out, os.W_OK | os.X_OK):
            p.error(f"--out {out}: the folder is not writable")
        return
    try:  # the last check: an empty folder is all that a later failure leaves
        os.makedirs(out)
    except OSError as e:
        p.error(f"--out {out}: cannot be created ({e.strerror})")


def _check_corpus(p, cfg):
    """--corpus-dir must hold fortune files with text, enough for the validation windows."""
    d = cfg.corpus_dir
    if not os.path.isdir(d):
        hint = (" (install the Debian package 'fortunes': scripts/install-deps.sh)"
                if d == corpus.FORTUNE_DIR else "")
        p.error(f"--corpus-dir {d}: no such folder{hint}")
    if not corpus.fortune_files(d):
        p.error(f"--corpus-dir {d}: no fortune files there (files without a '.' in the name, "
                f"other than {', '.join(sorted(corpus.EXCLUDED))})")
    train_data, val, info = corpus.load_corpus(d)
    if train_data.numel() == 0 or val.numel() == 0:
        p.error(f"--corpus-dir {d}: the fortune files there hold no text")
    if train_data.numel() < cfg.ctx + 2:
        p.error(f"--corpus-dir {d}: {train_data.numel()} training bytes, too little text for "
                f"windows of {cfg.ctx + 1} bytes")
    longest = cfg.ctx * cfg.eval_mult
    if val.numel() - longest - 1 < max(cfg.val_windows, cfg.needle_trials):
        p.error(f"--corpus-dir {d}: {val.numel()} validation bytes, too little text for "
                f"{max(cfg.val_windows, cfg.needle_trials)} evaluation windows of {longest} "
                "bytes (lower --ctx, or give more text)")
    return info


def parse_args(argv, check_corpus=True):
    """The options, with the preset's values filled in, validated (argparse errors, exit 2,
    before anything is run or written). check_corpus=False skips reading the corpus."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--out", default="out/lm",
                   help="output folder (default out/lm); a new or empty folder, or an earlier "
                   "run's, whose output files are replaced")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--long", action="store_true",
                      help="the longer version (4x the steps at twice the batch)")
    size.add_argument("--smoke", action="store_true", help="the CI smoke size (seconds)")
    p.add_argument("--x16", action="store_true", help="evaluate to 16x the context (not 8x)")
    p.add_argument("--seeds", type=int, help="seeds per variant (default 3; smoke 1)")
    p.add_argument("--steps", type=int,
                   help="training steps (default 500; --long 2000; --smoke 40); the fine-tunes "
                   "keep their own count, --ft-steps")
    p.add_argument("--ft-steps", type=int,
                   help="fine-tune steps of switch_ft and its control softmax_ft, after the "
                   "training (default 90; --long 300; --smoke 8); not scaled by --steps")
    p.add_argument("--jobs", type=int, default=2,
                   help="runs in parallel, one thread each (default %(default)s)")
    p.add_argument("--ctx", type=int, default=128,
                   help="training context (default %(default)s; at least 2 x the largest "
                   "training needle code + 9, i.e. 19 for 5 capitals)")
    p.add_argument("--lr", type=float, default=3e-3,
                   help="peak learning rate (default %(default)s)")
    p.add_argument("--s-init", type=float, default=0.43,
                   help="initial s of the ssmax variants (default %(default)s)")
    p.add_argument("--needle-fraction", type=float,
                   help="fraction of training windows carrying needle pairs (default 0.5)")
    p.add_argument("--needle-pairs", type=int,
                   help="needle pairs in such a window (default 1; smoke 2)")
    p.add_argument("--needle-code-max", type=int,
                   help="training needles carry 5 .. this many capitals (default 5; smoke 8; "
                   "the test: 5); at most (ctx - 9) / 2")
    p.add_argument("--corpus-dir", default=corpus.FORTUNE_DIR,
                   help="folder of fortune files (the text of the Debian package 'fortunes'; "
                   "default %(default)s); files with a '.' in the name and "
                   f"{', '.join(sorted(corpus.EXCLUDED))} are left out")
    args = p.parse_args(argv)
    preset = "long" if args.long else "smoke" if args.smoke else "default"
    for key, value in PRESETS[preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.preset, args.eval_mult = preset, 16 if args.x16 else 8
    args.log_every = 5 if args.smoke else 10
    for name in ("steps", "ft_steps", "seeds", "jobs", "needle_trials", "val_windows"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    if args.needle_pairs < 0:
        p.error(f"--needle-pairs must be at least 0 (got {args.needle_pairs})")
    if not 0.0 <= args.needle_fraction <= 1.0:
        p.error(f"--needle-fraction must lie in [0, 1] (got {args.needle_fraction})")
    if not (math.isfinite(args.lr) and args.lr > 0):
        p.error(f"--lr must be a positive number (got {args.lr})")
    if not math.isfinite(args.s_init):
        p.error(f"--s-init must be finite (got {args.s_init})")
    if args.needle_code_max < corpus.NEEDLE_CODE:
        p.error(f"--needle-code-max must be at least {corpus.NEEDLE_CODE}, the test needle's "
                f"code (got {args.needle_code_max})")
    if args.ctx < min_ctx(corpus.NEEDLE_CODE):
        p.error(f"--ctx must be at least {min_ctx(corpus.NEEDLE_CODE)} for the needle "
                f"(got {args.ctx})")
    if args.ctx < min_ctx(args.needle_code_max):
        p.error(f"--needle-code-max {args.needle_code_max} does not fit a needle pair in "
                f"--ctx {args.ctx}: at most {(args.ctx - 9) // 2} capitals (or --ctx at least "
                f"{min_ctx(args.needle_code_max)})")
    args.corpus_info = _check_corpus(p, args) if check_corpus else None
    _check_out(p, args.out)
    return args


def prepare_out(out):
    """Makes --out, removing an earlier run's output files there (only those)."""
    for name in OUTPUT_DIRS:
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    for name in OUTPUT_FILES:
        path = os.path.join(out, name)
        if os.path.isfile(path):
            os.remove(path)
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)


def main(argv=None):
    cfg = parse_args(argv)
    info = cfg.corpus_info
    del cfg.corpus_info
    prepare_out(cfg.out)
    jobs = [(cfg, kind, seed) for seed in range(cfg.seeds) for kind in TRAINED]
    log(f"lm: {cfg.preset}: {len(jobs)} training runs ({cfg.steps} steps, batch {cfg.batch}, "
        f"context {cfg.ctx}), {cfg.jobs} at a time; corpus {info['train_bytes']} train / "
        f"{info['validation_bytes']} validation bytes")
    meta = {k: v for k, v in vars(cfg).items()}
    meta.update(corpus=info, torch=torch.__version__)
    with open(os.path.join(cfg.out, "meta.json"), "w") as f:
        json.dump(meta, f)  # lets report.py report a partial run
    t0, results, cpu = time.time(), [], 0.0
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(cfg.jobs, maxtasksperchild=1) as pool:
        for done, out in enumerate(pool.imap_unordered(run_job, jobs), 1):
            for r in out:
                name = os.path.join(cfg.out, "runs", f"{r['variant']}-seed{r['seed']}.json")
                with open(name, "w") as f:
                    json.dump(r, f)
            results.extend(out)
            cpu += out[-1]["cpu_s"]
            log(f"lm: {done}/{len(jobs)} runs done ({time.time() - t0:.0f} s)")
    meta.update(wall_s=time.time() - t0, cpu_s=cpu)
    import report  # noqa: E402  (after the runs: only the parent writes the report)
    report.write(cfg.out, results, meta)
    log(f"lm: wrote {os.path.join(cfg.out, 'report.md')} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
