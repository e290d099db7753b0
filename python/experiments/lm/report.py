"""Tables, gnuplot plots and report.md from lm_length.py's runs (mean and spread over seeds).

    /usr/bin/python3 python/experiments/lm/report.py out/lm    # re-make from out/lm/runs/*.json
"""

import glob
import json
import math
import os
import shutil
import subprocess
import sys

from corpus import EXCLUDED, NEEDLE_CODE, NEEDLE_LEN, NEEDLE_LETTERS, VALIDATION_EVERY

VARIANTS = ("softmax", "ssmax", "ssmax_b", "softmax_ft", "switch", "switch_ft")
FINE_TUNED = ("softmax_ft", "switch_ft")
TRAINED = ("softmax", "ssmax", "ssmax_b")
LABELS = {
    "softmax": "Softmax",
    "ssmax": "SSMax, learnable s",
    "ssmax_b": "SSMax, learnable s and b",
    "switch": "Softmax -> SSMax (s = 1/log n_train), no training",
    "switch_ft": "Softmax -> SSMax, short fine-tune",
    "softmax_ft": "Softmax, same short fine-tune (control)",
}


def mean_sd(values):
    """Mean and sample sd of the finite values; the sd is nan for fewer than two (no spread
    to report)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def fmt(values, digits=3):
    """'mean ± sd', or the mean alone when there is one value (one seed)."""
    m, sd = mean_sd(values)
    if not math.isfinite(m):
        return "n/a"
    return f"{m:.{digits}f} ± {sd:.{digits}f}" if math.isfinite(sd) else f"{m:.{digits}f}"


def over_seeds(meta):
    """How the tables aggregate: '(mean ± sd over N seeds)' or '(one seed)'."""
    n = meta.get("seeds", 0)
    return "one seed" if n == 1 else f"mean ± sd over {n} seeds"


def duration(seconds):
    """Seconds or minutes, readable; None for a time not recorded."""
    if seconds is None or not math.isfinite(seconds):
        return None
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def logged_point(curve, step, start):
    """The logged loss point nearest `step` and the steps it averages: (loss, first, last).
    A curve point (s, loss) is the mean training loss over the steps after the previous
    point up to s (the first point: from start + 1)."""
    i = min(range(len(curve)), key=lambda j: abs(curve[j][0] - step))
    first = curve[i - 1][0] + 1 if i else start + 1
    return curve[i][1], first, curve[i][0]


def steps_label(first, last):
    return f"step {last}" if first == last else f"steps {first}-{last}"


def by_variant(results):
    groups = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        groups.setdefault(r["variant"], []).append(r)
    return {v: groups[v] for v in VARIANTS if v in groups}


def buckets(ctx, longest):
    """Position ranges [lo, hi): the training context, then each doubling."""
    edges, hi = [(0, ctx)], ctx
    while hi < longest:
        edges.append((hi, 2 * hi))
        hi *= 2
    return edges


def bucket_mean(curve, lo, hi):
    part = curve[lo:hi]
    return sum(part) / len(part)


def training_table(groups, steps, start=0, fine_tune=False):
    """Training loss about a quarter, half and all the way through `steps` steps after
    `start`: of the trained variants, or (fine_tune) of the fine-tunes, whose step count
    continues the training's. Each column is the logged point nearest the mark, labelled
    with the steps it averages (the loss is logged as the mean over every log_every steps)."""
    marks = [start + max(1, steps // 4), start + max(1, steps // 2), start + steps]
    rows = [(v, runs) for v, runs in groups.items()
            if runs[0]["curve"] and (v in FINE_TUNED) == fine_tune]
    if not rows:
        return "(no runs)"
    curve0 = rows[0][1][0]["curve"]  # every run logs at the same steps
    spans = []
    for m in marks:
        span = logged_point(curve0, m, start)[1:]
        if span not in spans:
            spans.append(span)
    lines = ["| variant | " + " | ".join(f"loss, {steps_label(*sp)}" for sp in spans) + " |",
             "|---|" + "---|" * len(spans)]
    for v, runs in rows:
        cells = [fmt([logged_point(r["curve"], last, start)[0] for r in runs])
                 for _, last in spans]
        lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def position_table(groups, ctx, rope):
    longest = len(next(iter(groups.values()))[0]["position_loss"][rope])
    edges = buckets(ctx, longest)
    head = " | ".join(f"{lo}-{hi - 1}" for lo, hi in edges)
    lines = [f"| variant | {head} |", "|---|" + "---|" * len(edges)]
    for v, runs in groups.items():
        cells = [fmt([bucket_mean(r["position_loss"][rope], lo, hi) for r in runs])
                 for lo, hi in edges]
        lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def needle_table(groups, rope, key):
    lengths = next(iter(groups.values()))[0]["lengths"]
    lines = ["| variant | " + " | ".join(f"L = {n}" for n in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for v, runs in groups.items():
        cells = [fmt([r["needle"][rope][str(n)][key] for r in runs], 2) for n in lengths]
        lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attention_table(groups, rope, layer=-1):
    """The needle test's attention measure: the largest weight any head of `layer` puts on
    the first needle from the queries that predict the recalled letters, by length."""
    lengths = next(iter(groups.values()))[0]["lengths"]
    lines = ["| variant | " + " | ".join(f"L = {n}" for n in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for v, runs in groups.items():
        cells = [fmt([r["needle"][rope][str(n)]["attention"][layer] for r in runs], 3)
                 for n in lengths]
        lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + " |")
    runs = next(iter(groups.values()))
    cells = [f"{runs[0]['needle'][rope][str(n)]['uniform']:.3f}" for n in lengths]
    lines.append("| (uniform attention) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attention_layer_table(groups, rope, length):
    """The same measure for every layer at one length."""
    runs0 = next(iter(groups.values()))
    layers = len(runs0[0]["needle"][rope][str(length)]["attention"])
    lines = ["| variant | " + " | ".join(f"layer {i}" for i in range(layers)) + " |",
             "|---|" + "---|" * layers]
    for v, runs in groups.items():
        cells = [fmt([r["needle"][rope][str(length)]["attention"][i] for r in runs], 3)
                 for i in range(layers)]
        lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def uniform_text(results):
    """The needle attention that uniform attention would give, at the shortest and longest L."""
    r = results[0]
    return ", ".join(f"{r['needle']['plain'][str(n)]['uniform']:.3f} at L = {n}"
                     for n in (r["lengths"][0], r["lengths"][-1]))


def summary_table(groups, meta):
    """One line per variant: the headline numbers (the table of docs/experiments/language_model.md)."""
    ctx, steps = meta["ctx"], meta["steps"]
    lengths = next(iter(groups.values()))[0]["lengths"]
    longest = len(next(iter(groups.values()))[0]["position_loss"]["plain"])
    lo, hi = buckets(ctx, longest)[-1]
    n0, n1 = lengths[0], lengths[-1]
    trained = [runs[0]["curve"] for v, runs in groups.items() if v in TRAINED]
    tuned = [runs[0]["curve"] for v, runs in groups.items() if v in FINE_TUNED]
    early = (steps_label(*logged_point(trained[0], steps // 4, 0)[1:]) if trained
             else f"step {steps // 4}")
    last = steps_label(*logged_point(trained[0], steps, 0)[1:]) if trained else f"step {steps}"
    if tuned:
        last += (" (fine-tunes: " + steps_label(*logged_point(
            tuned[0], steps + meta["ft_steps"], steps)[1:]) + ")")
    head = (f"| variant | train loss, {early} | train loss, {last} "
            f"| val 0-{ctx - 1} | val {lo}-{hi - 1} (RoPE plain) "
            f"| val {lo}-{hi - 1} (RoPE scaled) | needle loss L={n0} | needle loss L={n1} "
            f"| needle attention L={n0} | needle attention L={n1} |")
    lines = [head, "|---|" + "---|" * 9]

    def at(r, step):
        return logged_point(r["curve"], step, 0)[0] if r["curve"] else None

    for v, runs in groups.items():
        early = fmt([at(r, steps // 4) for r in runs]) if v in TRAINED else "-"
        last = fmt([r["curve"][-1][1] for r in runs]) if runs[0]["curve"] else "-"
        cells = [early, last,
                 fmt([bucket_mean(r["position_loss"]["plain"], 0, ctx) for r in runs]),
                 fmt([bucket_mean(r["position_loss"]["plain"], lo, hi) for r in runs]),
                 fmt([bucket_mean(r["position_loss"]["scaled"], lo, hi) for r in runs]),
                 fmt([r["needle"]["plain"][str(n0)]["loss"] for r in runs], 2),
                 fmt([r["needle"]["plain"][str(n1)]["loss"] for r in runs], 2),
                 fmt([r["needle"]["plain"][str(n0)]["attention"][-1] for r in runs], 3),
                 fmt([r["needle"]["plain"][str(n1)]["attention"][-1] for r in runs], 3)]
        lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def s_table(groups):
    lines = ["| variant | layer | s (mean ± sd over heads and seeds) | s range | b (mean ± sd) "
             "| b range |", "|---|---|---|---|---|---|"]
    for v, runs in groups.items():
        if runs[0]["s"][0] is None:
            continue
        for layer in range(len(runs[0]["s"])):
            s = [x for r in runs for x in r["s"][layer]]
            b = [x for r in runs for x in (r["b"][layer] or [])]
            b_cells = (f"{fmt(b)} | {min(b):.3f} .. {max(b):.3f}" if b else "- | -")
            lines.append(f"| {LABELS[v]} | {layer} | {fmt(s)} | {min(s):.3f} .. {max(s):.3f} "
                         f"| {b_cells} |")
    return "\n".join(lines)


def write_data(out, groups, ctx):
    """Plot data files: one per figure, one column block per variant (mean, sd)."""
    data = os.path.join(out, "data")
    os.makedirs(data, exist_ok=True)
    for v, runs in groups.items():
        if runs[0]["curve"]:
            with open(os.path.join(data, f"train_{v}.tsv"), "w") as f:
                for i, (step, _) in enumerate(runs[0]["curve"]):
                    m, sd = mean_sd([r["curve"][i][1] for r in runs])
                    sd = sd if math.isfinite(sd) else 0.0
                    f.write(f"{step}\t{m:.5f}\t{sd:.5f}\n")
        for rope in ("plain", "scaled"):
            longest = len(runs[0]["position_loss"][rope])
            with open(os.path.join(data, f"position_{rope}_{v}.tsv"), "w") as f:
                width = max(1, ctx // 8)
                for lo in range(0, longest, width):
                    m, sd = mean_sd([bucket_mean(r["position_loss"][rope], lo, lo + width)
                                     for r in runs])
                    sd = sd if math.isfinite(sd) else 0.0
                    f.write(f"{lo + width / 2:.1f}\t{m:.5f}\t{sd:.5f}\n")
            with open(os.path.join(data, f"needle_{rope}_{v}.tsv"), "w") as f:
                for n in runs[0]["lengths"]:
                    m, sd = mean_sd([r["needle"][rope][str(n)]["loss"] for r in runs])
                    sd = sd if math.isfinite(sd) else 0.0
                    f.write(f"{n}\t{m:.5f}\t{sd:.5f}\n")
            with open(os.path.join(data, f"needleatt_{rope}_{v}.tsv"), "w") as f:
                for n in runs[0]["lengths"]:
                    m, sd = mean_sd([r["needle"][rope][str(n)]["attention"][-1] for r in runs])
                    sd = sd if math.isfinite(sd) else 0.0
                    f.write(f"{n}\t{m:.5f}\t{sd:.5f}\n")
    runs = next(iter(groups.values()))
    with open(os.path.join(data, "needleatt_uniform.tsv"), "w") as f:
        for n in runs[0]["lengths"]:
            f.write(f"{n}\t{runs[0]['needle']['plain'][str(n)]['uniform']:.5f}\n")
    return data


def plot(out, groups, ctx):
    """PNG plots with gnuplot (skipped, with a note, when gnuplot is missing)."""
    if shutil.which("gnuplot") is None:
        return ["gnuplot not found: no plots (the tables hold the numbers)"]
    data = write_data(out, groups, ctx)
    styles = {"softmax": 1, "ssmax": 2, "ssmax_b": 3, "switch": 4, "softmax_ft": 7,
              "switch_ft": 6}

    def series(prefix, with_band):
        parts = []
        for v in groups:
            path = os.path.join(data, f"{prefix}_{v}.tsv")
            if not os.path.exists(path):
                continue
            lt = styles[v]
            if with_band:
                parts.append(f"'{path}' u 1:($2-$3):($2+$3) w filledcurves lc {lt} "
                             "fs transparent solid 0.2 notitle")
            parts.append(f"'{path}' u 1:2 w lp lc {lt} pt {lt} ps 0.6 t '{LABELS[v]}'")
        return ", ".join(parts)

    common = ("set terminal pngcairo noenhanced size 900,560 font ',10'; set grid; "
              "set key top right; ")
    # Training-loss axis: from the lowest point to the loss a tenth of the way in.
    curves = [r["curve"] for runs in groups.values() for r in runs if r["curve"]]
    top = max(c[len(c) // 10][1] for c in curves) + 0.1
    bottom = min(p[1] for c in curves for p in c) - 0.05
    spread = ("mean ± sd over seeds" if max(len(runs) for runs in groups.values()) > 1
              else "one seed")
    scripts = {
        "train_loss.png": common + "set xlabel 'step'; set ylabel 'training loss (nats/byte)';"
        f" set title 'Training loss ({spread})'; set yrange [{bottom:.2f}:{top:.2f}]; plot "
        + series("train", True),
    }
    for rope in ("plain", "scaled"):
        scripts[f"position_loss_{rope}.png"] = (
            common + f"set logscale x 2; set xlabel 'position'; set ylabel 'validation loss "
            f"(nats/byte)'; set arrow from {ctx},graph 0 to {ctx},graph 1 nohead dt 2; "
            f"set title 'Validation loss by position, RoPE {rope} (trained at {ctx})'; "
            "set yrange [*:4]; plot " + series(f"position_{rope}", False))
        scripts[f"needle_{rope}.png"] = (
            common + "set logscale x 2; set xlabel 'context length (needle at 5%, recall at "
            f"the end)'; set ylabel 'loss on recalled needle letters (nats)'; set title "
            f"'Needle recall, RoPE {rope} (ln 26 = 3.26: no recall)'; "
            "plot " + series(f"needle_{rope}", True))
        scripts[f"needle_attention_{rope}.png"] = (
            common + "set logscale x 2; set logscale y; set xlabel 'context length'; "
            "set ylabel 'weight on the first needle (max over last-layer heads)'; set title "
            f"'Attention on the needle when recalling it, RoPE {rope}'; "
            "plot " + series(f"needleatt_{rope}", True) + f", '{data}/needleatt_uniform.tsv' "
            "u 1:2 w l dt 2 lc 8 t 'uniform attention'")
    notes = []
    for name, script in scripts.items():
        full = f"set output '{os.path.join(out, name)}'; {script}"
        run = subprocess.run(["gnuplot", "-e", full], capture_output=True, text=True)
        if run.returncode != 0:
            notes.append(f"gnuplot failed for {name}: {run.stderr.strip()[:300]}")
    return notes


def observations(groups, ctx):
    """A few measured comparisons, stated plainly (the report's paragraph is separate)."""
    lines = []

    def final(v):
        return mean_sd([r["curve"][-1][1] for r in groups[v]])[0]

    def pos(v, rope, k):
        lo, hi = buckets(ctx, len(groups[v][0]["position_loss"][rope]))[k]
        return mean_sd([bucket_mean(r["position_loss"][rope], lo, hi) for r in groups[v]])[0]

    def needle(v, rope, n):
        return mean_sd([r["needle"][rope][str(n)]["loss"] for r in groups[v]])[0]

    if "softmax" in groups:
        for v in ("ssmax", "ssmax_b"):
            if v in groups:
                lines.append(f"- Final training loss, {LABELS[v]}: {final(v):.3f} against "
                             f"Softmax {final('softmax'):.3f}.")
        longest_k = len(buckets(ctx, len(groups["softmax"][0]["position_loss"]["plain"]))) - 1
        lengths = groups["softmax"][0]["lengths"]
        for rope in ("plain", "scaled"):
            cells = ", ".join(f"{LABELS[v]} {pos(v, rope, longest_k):.3f}" for v in groups)
            lines.append(f"- Validation loss in the last position bucket (RoPE {rope}): {cells}.")
            cells = ", ".join(f"{LABELS[v]} {needle(v, rope, lengths[-1]):.2f}" for v in groups)
            lines.append(f"- Needle loss at L = {lengths[-1]} (RoPE {rope}): {cells}.")
    return "\n".join(lines)


def assessment(groups, ctx):
    """The paragraph: what was measured against what the paper reports, said plainly
    (generated from the numbers, so it holds for any run size)."""
    if not {"softmax", "ssmax"} <= set(groups):
        return "Softmax or SSMax runs are missing: no comparison."

    def final(v):
        return mean_sd([r["curve"][-1][1] for r in groups[v]])

    def last_bucket(v, rope="plain"):
        lo, hi = buckets(ctx, len(groups[v][0]["position_loss"][rope]))[-1]
        return mean_sd([bucket_mean(r["position_loss"][rope], lo, hi) for r in groups[v]])

    def needle(v, n, rope="plain"):
        return mean_sd([r["needle"][rope][str(n)]["loss"] for r in groups[v]])

    def first_bucket(v, rope="plain"):
        return mean_sd([bucket_mean(r["position_loss"][rope], 0, ctx) for r in groups[v]])

    def versus(a, b):
        """'A against B (lower)': lower or higher only when the gap exceeds the seeds'
        spread (and 0.005); no verdict from a single seed (no spread to compare with)."""
        (ma, sa), (mb, sb) = a, b
        if not (math.isfinite(sa) and math.isfinite(sb)):
            return f"{ma:.3f} against {mb:.3f}"
        gap = mb - ma
        rel = ("no clear difference" if abs(gap) <= max(sa, sb, 0.005)
               else "lower" if gap > 0 else "higher")
        return f"{ma:.3f} against {mb:.3f} ({rel})"

    lengths = groups["softmax"][0]["lengths"]
    lo, hi = buckets(ctx, len(groups["softmax"][0]["position_loss"]["plain"]))[-1]
    single = len(groups["softmax"]) < 2 or len(groups["ssmax"]) < 2
    parts = ["The paper reports, for SSMax against Softmax, lower training loss, lower loss "
             "and better needle retrieval past the training length, and part of that gain "
             "for a Softmax model switched to SSMax after training. Here"
             + (" (one seed: no spread, so the numbers stand without a verdict)" if single
                else "") + ":",
             f"final training loss, SSMax with learnable s against Softmax: "
             f"{versus(final('ssmax'), final('softmax'))}."]
    if "ssmax_b" in groups:
        parts.append(f"With s and b: {versus(final('ssmax_b'), final('softmax'))}.")
    parts.append(f"Validation loss past the training length (positions {lo}-{hi - 1}, RoPE "
                 f"plain), SSMax against Softmax: "
                 f"{versus(last_bucket('ssmax'), last_bucket('softmax'))}")
    if "ssmax_b" in groups:
        parts[-1] += f"; with s and b: {versus(last_bucket('ssmax_b'), last_bucket('softmax'))}"
    parts[-1] += "."
    if "switch" in groups:
        parts.append(f"The trained Softmax model switched to SSMax (s = 1/log {ctx}), against "
                     f"the same model with Softmax: "
                     f"{versus(last_bucket('switch'), last_bucket('softmax'))}")
        if "switch_ft" in groups:
            parts[-1] += (f"; after the short fine-tune: "
                          f"{versus(last_bucket('switch_ft'), last_bucket('softmax'))}")
        parts[-1] += "."
    if {"switch_ft", "softmax_ft"} <= set(groups):
        parts.append(f"Against its control (the same fine-tune staying Softmax), the switched "
                     f"and fine-tuned model's loss past the training length is "
                     f"{versus(last_bucket('switch_ft'), last_bucket('softmax_ft'))}; inside "
                     f"the training context "
                     f"{versus(first_bucket('switch_ft'), first_bucket('softmax_ft'))}.")
    n0, n1 = lengths[0], lengths[-1]
    chance = math.log(len(NEEDLE_LETTERS))
    recalled = [v for v in groups if needle(v, n0)[0] < chance - 0.5]
    if recalled:
        cells = "; ".join(f"{LABELS[v]} {needle(v, n0)[0]:.2f} at L = {n0}, "
                          f"{needle(v, n1)[0]:.2f} at L = {n1}" for v in groups)
        parts.append(f"Needle (loss on the recalled letters, chance ln 26 = {chance:.2f}): "
                     f"{cells}.")
    else:
        cells = ", ".join(f"{LABELS[v]} {needle(v, n0)[0]:.2f}" for v in groups)
        parts.append(f"Needle: no variant recalls the needle even within the training context "
                     f"(loss at L = {n0}: {cells}; chance is ln 26 = {chance:.2f}, and no "
                     "variant is 0.5 below it), so the loss-based needle test says nothing about "
                     "retrieval in this run (see the attention measure).")
    return " ".join(parts)


def setup_text(meta):
    """The Setup section, from the run's settings (meta.json / results.json)."""
    c = meta["corpus"]
    d = "16" if meta["eval_mult"] == 16 else "8"
    cores = max(1, min(meta["jobs"], os.cpu_count() or 1))
    excluded = ", ".join(f"'{n}'" for n in c.get("excluded", sorted(EXCLUDED)))
    every = c.get("validation_every", VALIDATION_EVERY)
    code_max = meta.get("needle_code_max", NEEDLE_CODE)
    code = (f"{NEEDLE_CODE} random capitals" if code_max <= NEEDLE_CODE
            else f"{NEEDLE_CODE} to {code_max} random capitals")
    pairs = meta["needle_pairs"]
    if meta["needle_fraction"] > 0 and pairs > 0:
        needles = (f"{meta['needle_fraction'] * 100:g}% of training windows carry {pairs} "
                   f"planted needle pair{'s' if pairs != 1 else ''} (each '#' + {code} + '#', "
                   "twice, the first copy in the window's first half) as a training signal "
                   "for recall; the rest is the text as it is.")
    else:
        needles = "no needles are planted in the training windows (the text as it is)."
    ft = meta["ft_steps"]
    seeds = meta["seeds"]
    spread = ("One seed per variant: the tables give that seed's values (no spread)"
              if seeds == 1 else f"{seeds} seeds per variant; tables give mean ± sample sd "
              "over seeds")
    wall = duration(meta.get("wall_s"))
    cpu = duration(meta.get("cpu_s")) if (meta.get("cpu_s") or 0) > 0 else None
    jobs = meta["jobs"]
    run = f"- Run: preset `{meta['preset']}`, {jobs} run{'s' if jobs != 1 else ''} at a time"
    if wall:
        run += f", wall time {wall} (on a machine that may have been shared with other work)"
    else:
        run += " (wall time not recorded: the run did not complete, or results.json is absent)"
    if cpu:
        run += (f"; the training runs' CPU time {cpu} in all, i.e. about "
                f"{duration(meta['cpu_s'] / cores)} of wall time on {cores} idle "
                f"core{'s' if cores != 1 else ''} if they were kept busy")
    run += f"; torch {meta['torch']}."
    return f"""\
- Corpus: {c['source']}, {c['documents']} fortunes (files {excluded} left out: pictures or
  a translation exercise), shuffled with a fixed seed; every {every}th fortune is validation:
  {c['train_bytes']} training bytes, {c['validation_bytes']} validation bytes. Tokens are bytes
  (vocabulary 256).
- Model: {meta['layers']} layers, {meta['heads']} heads, d_model {meta['dim']}, pre-LN, 4x GELU MLP,
  tied embeddings, no dropout; RoPE (base 10000) on q and k. Attention is
  `ssmax_torch.attention` (the library's fused kernels, forward and backward), causal, n = p + 1.
- Training: context {meta['ctx']}, batch {meta['batch']}, {meta['steps']} steps, AdamW (lr
  {meta['lr']}, warm-up then cosine, weight decay 0.1 on matrices only, clip 1.0);
  {needles} The training loss is logged as its mean over every {meta.get('log_every', 10)} steps.
  SSMax starts at s = {meta['s_init']} (b = 0); s and b are per head,
  learned with the other weights, neither clamped. The switch variants take each trained
  Softmax model and set s = 1/log({meta['ctx']}) = {1 / math.log(meta['ctx']):.4f} in every head
  (SSMax = Softmax at n = {meta['ctx']}); switch_ft then trains {ft} more steps
  with s learnable; softmax_ft, its control, trains the same Softmax model the same
  {ft} steps on the same batches with the same schedule, staying Softmax.
- Evaluation, up to {d}x the training context: validation loss per position over
  {meta['val_windows']} fixed windows of {meta['ctx'] * meta['eval_mult']} bytes; needle test:
  {meta['needle_trials']} validation windows per length L with a needle ('#' + {NEEDLE_CODE} random
  capitals + '#') at 5% depth and its recall in the last {NEEDLE_LEN} bytes; reported: loss on the
  {NEEDLE_CODE} recalled letters (ln 26 = 3.26 nats means no recall), their argmax accuracy (chance
  1/26 = 0.04) and the attention on the first needle from the queries that predict them
  (computed in plain torch from q and k). Both RoPE modes: *plain* (rotations continue
  past the training length) and *scaled* (base multiplied by r^(d/(d-2)), r = L / {meta['ctx']},
  for forwards longer than the training context, in the spirit of the paper's larger base at
  evaluation; same weights).
- {spread}. Deterministic
  for a seed: one torch thread per run (the library's kernels then run single-threaded),
  torch.manual_seed(seed), seeded batch generator, fixed evaluation windows.
{run}"""


def write(out, results, meta):
    """Writes results.json, report.md and the plots under `out`."""
    groups = by_variant(results)
    ctx = meta["ctx"]
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"meta": meta, "runs": results}, f)
    notes = plot(out, groups, ctx)
    sections = [
        "# Scalable-Softmax in a small byte-level language model\n",
        "Produced by `python/experiments/lm/lm_length.py` (see `scripts/lm_experiment.sh`).\n",
        "## Setup\n", setup_text(meta), "",
        f"## Summary ({over_seeds(meta)})\n",
        f"Losses in nats per byte; needle loss: on the {NEEDLE_CODE} recalled letters (ln 26 = "
        "3.26: no recall); needle attention: the largest weight a last-layer head puts on the "
        "first needle when predicting them (RoPE plain; uniform attention: "
        f"{uniform_text(results)}).\n",
        summary_table(groups, meta), "",
        f"## Training loss (nats/byte; {over_seeds(meta)})\n",
        "Each column is the loss logged nearest a quarter, half and all of the steps: the "
        "mean training loss over the steps named in its header.\n",
        training_table(groups, meta["steps"]),
        f"\nThe fine-tunes ({meta['ft_steps']} more steps from the trained Softmax model, the "
        "same batches for both; the switched model with s learnable, the control staying "
        "Softmax):\n",
        training_table(groups, meta["ft_steps"], meta["steps"], fine_tune=True),
        "\n![training loss](train_loss.png)\n",
    ]
    for rope in ("plain", "scaled"):
        sections += [f"## Validation loss by position, RoPE {rope} (nats/byte)\n",
                     position_table(groups, ctx, rope),
                     f"\n![validation loss by position](position_loss_{rope}.png)\n"]
    for rope in ("plain", "scaled"):
        sections += [f"## Needle recall, RoPE {rope}: loss on the recalled letters (nats)\n",
                     needle_table(groups, rope, "loss"),
                     "\nArgmax accuracy on the recalled letters:\n",
                     needle_table(groups, rope, "accuracy"),
                     f"\n![needle](needle_{rope}.png)\n",
                     f"Attention on the needle, RoPE {rope}: the largest weight any head of "
                     f"the last layer puts on the first needle's {NEEDLE_LEN} bytes from the "
                     "queries that predict the recalled letters (mean over those queries and "
                     "the trials; the last row is what uniform attention over the causal "
                     "keys would give):\n",
                     attention_table(groups, rope),
                     f"\n![needle attention](needle_attention_{rope}.png)\n"]
    sections += [f"The same attention measure for every layer at L = {ctx} (RoPE plain):\n",
                 attention_layer_table(groups, "plain", ctx), ""]
    sections += ["## Learned s and b\n", s_table(groups), "",
                 "## Measured comparisons\n", observations(groups, ctx), "",
                 "## What this run shows\n", assessment(groups, ctx), ""]
    if notes:
        sections += ["## Notes\n", "\n".join(f"- {n}" for n in notes), ""]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(sections) + "\n")


def main(argv):
    out = argv[1] if len(argv) > 1 else "out/lm"
    results = []
    for path in sorted(glob.glob(os.path.join(out, "runs", "*.json"))):
        with open(path) as f:
            results.append(json.load(f))
    full = os.path.join(out, "results.json")  # written when the run completed
    with open(full if os.path.exists(full) else os.path.join(out, "meta.json")) as f:
        meta = json.load(f)
    meta = meta.get("meta", meta)
    # wall_s is only in results.json (a completed run): without it the report says so.
    # A job's CPU time is on its last record (softmax's job ends with switch_ft).
    meta.setdefault("cpu_s", sum(r.get("cpu_s", 0.0) for r in results
                                 if r["variant"] in ("ssmax", "ssmax_b", "switch_ft")))
    meta["seeds"] = len({r["seed"] for r in results})
    write(out, results, meta)


if __name__ == "__main__":
    main(sys.argv)
