"""The corpus: English text from Debian's `fortunes` package, as bytes, with a fixed split,
and the needle (a short unique string planted in the text and recalled later).

Tokens are bytes (vocabulary 256). The fortune files are read in sorted order, cut at their
"%" separator lines into fortunes, and the fortunes are shuffled with a fixed seed
(SPLIT_SEED, independent of the training seed); every 20th goes to validation. Each fortune
ends with a blank line, so documents stay visible in the stream.
"""

import os
import random

import torch

FORTUNE_DIR = "/usr/share/games/fortunes"
# Files that are pictures or a translation exercise rather than English prose.
EXCLUDED = {"art", "ascii-art", "translate-me"}
SPLIT_SEED = 20250131
VALIDATION_EVERY = 20

NEEDLE_LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
NEEDLE_CODE = 5  # random capital letters between the two marks: '#KXQJB#'
NEEDLE_LEN = NEEDLE_CODE + 2


def fortune_files(directory=FORTUNE_DIR):
    """The corpus files: every fortune file (not the .dat / .u8 indexes), sorted."""
    if not os.path.isdir(directory):
        raise SystemExit(f"lm: no {directory}: install the Debian package 'fortunes' "
                         "(scripts/install-deps.sh)")
    names = sorted(n for n in os.listdir(directory)
                   if "." not in n and n not in EXCLUDED
                   and os.path.isfile(os.path.join(directory, n)))
    return [os.path.join(directory, n) for n in names]


def split_fortunes(text):
    """A fortune file's text as a list of fortunes (the '%' lines separate them)."""
    fortunes, current = [], []
    for line in text.split("\n"):
        if line.strip() == "%":
            if current:
                fortunes.append("\n".join(current).strip("\n"))
            current = []
        else:
            current.append(line)
    if current and "\n".join(current).strip():
        fortunes.append("\n".join(current).strip("\n"))
    return [f for f in fortunes if f.strip()]


def load_corpus(directory=FORTUNE_DIR):
    """(train, validation) as uint8 tensors of bytes, and a description dict."""
    fortunes = []
    for path in fortune_files(directory):
        with open(path, encoding="utf-8", errors="replace") as f:
            fortunes.extend(split_fortunes(f.read().replace("\t", "    ")))
    random.Random(SPLIT_SEED).shuffle(fortunes)
    val = [f for i, f in enumerate(fortunes) if i % VALIDATION_EVERY == 0]
    train = [f for i, f in enumerate(fortunes) if i % VALIDATION_EVERY != 0]

    def as_bytes(docs):
        data = "".join(d + "\n\n" for d in docs).encode("utf-8")
        return torch.tensor(list(data), dtype=torch.uint8)

    info = {"source": f"Debian package 'fortunes' ({directory})", "documents": len(fortunes),
            "train_documents": len(train), "validation_documents": len(val),
            "excluded": sorted(EXCLUDED), "validation_every": VALIDATION_EVERY}
    train_t, val_t = as_bytes(train), as_bytes(val)
    info["train_bytes"], info["validation_bytes"] = train_t.numel(), val_t.numel()
    return train_t, val_t, info


def random_needle(gen, code=NEEDLE_CODE):
    """A needle '#XXXXX#' with `code` random capitals, as a uint8 tensor."""
    idx = torch.randint(len(NEEDLE_LETTERS), (code,), generator=gen)
    code = bytes(NEEDLE_LETTERS[i] for i in idx.tolist())
    return torch.tensor(list(b"#" + code + b"#"), dtype=torch.uint8)


def plant_pair(seq, first, second, needle):
    """Writes `needle` into seq (1-D) at `first` and again at `second` (the recall)."""
    seq[first:first + needle.numel()] = needle
    seq[second:second + needle.numel()] = needle


def train_batch(data, batch, ctx, gen, needle_fraction, needle_pairs=1, code_max=NEEDLE_CODE):
    """`batch` random windows of ctx + 1 bytes ([batch, ctx + 1], int64). A fraction of them
    carry `needle_pairs` needle pairs (different codes, not overlapping), each at random
    places inside the window, the first copy in the window's first half (training signal
    for recall)."""
    starts = torch.randint(data.numel() - ctx - 1, (batch,), generator=gen)
    x = torch.stack([data[s:s + ctx + 1] for s in starts.tolist()]).clone()
    planted = torch.rand(batch, generator=gen) < needle_fraction
    for row in torch.nonzero(planted).flatten().tolist():
        taken = torch.zeros(ctx + 1, dtype=torch.bool)
        for _ in range(needle_pairs):
            code = NEEDLE_CODE
            if code_max > NEEDLE_CODE:
                code = int(torch.randint(NEEDLE_CODE, code_max + 1, (1,), generator=gen))
            size = code + 2
            for _attempt in range(20):  # a few tries for a free place, else one pair fewer
                first = int(torch.randint(0, ctx // 2 - size, (1,), generator=gen))
                lo = first + size + 4
                second = int(torch.randint(lo, ctx + 1 - size, (1,), generator=gen))
                spans = (slice(first, first + size), slice(second, second + size))
                if not any(taken[sp].any() for sp in spans):
                    break
            else:
                continue
            for sp in spans:
                taken[sp] = True
            plant_pair(x[row], first, second, random_needle(gen, code))
    return x.long()


def validation_windows(data, count, length):
    """`count` fixed, evenly spaced windows of length + 1 bytes ([count, length + 1])."""
    span = data.numel() - length - 1
    if span < count:
        raise SystemExit(f"lm: validation text too short for {count} windows of {length}")
    starts = [i * (span // count) for i in range(count)]
    return torch.stack([data[s:s + length + 1] for s in starts]).long()


def needle_windows(data, count, length, seed):
    """The needle test at one context length: `count` validation windows of length + 1
    bytes, each with a needle at 5% depth and its recall at the very end. Returns the
    windows [count, length + 1], the slice of target positions that hold the recalled
    code letters (targets[t] = window[t + 1]; the query at t predicts them) and the slice of
    positions that hold the first needle."""
    gen = torch.Generator().manual_seed(seed)
    x = validation_windows(data, count, length).clone()
    first = max(1, length // 20)
    second = length + 1 - NEEDLE_LEN
    for row in range(count):
        plant_pair(x[row], first, second, random_needle(gen))
    # Recalled code letters are bytes second+1 .. second+NEEDLE_CODE: targets at t = byte - 1.
    return x, slice(second, second + NEEDLE_CODE), slice(first, first + NEEDLE_LEN)
