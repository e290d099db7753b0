"""Smoke test of the language-model experiment (python/experiments/lm): the pipeline end to
end at a tiny size (seconds), not the scientific result. Needs the ssmax_torch extension
and the `fortunes` corpus (scripts/install-deps.sh); skipped without them."""

import json
import math
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ssmax_torch")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LM = os.path.join(ROOT, "python", "experiments", "lm")
sys.path.insert(0, LM)

import corpus  # noqa: E402
import lm_length  # noqa: E402
import model as lm_model  # noqa: E402
import report  # noqa: E402

WRAPPER = os.path.join(ROOT, "scripts", "lm_experiment.sh")

needs_corpus = pytest.mark.skipif(not os.path.isdir(corpus.FORTUNE_DIR),
                                  reason="the 'fortunes' package is not installed")


@needs_corpus
def test_smoke_run_trains_and_evaluates_every_length(tmp_path):
    out = tmp_path / "lm"
    run = subprocess.run([sys.executable, os.path.join(LM, "lm_length.py"), "--smoke",
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "runs done" in run.stderr  # progress goes to stderr
    with open(out / "results.json") as f:
        results = json.load(f)
    meta, runs = results["meta"], results["runs"]
    variants = {r["variant"] for r in runs}
    assert variants == {"softmax", "ssmax", "ssmax_b", "softmax_ft", "switch", "switch_ft"}
    ctx, mult = meta["ctx"], meta["eval_mult"]
    lengths = [ctx * 2 ** i for i in range(int(math.log2(mult)) + 1)]
    for r in runs:
        if r["variant"] in ("softmax", "ssmax", "ssmax_b"):
            first, last = r["curve"][0][1], r["curve"][-1][1]
            assert last < first - 0.5, (r["variant"], first, last)  # the loss falls
        assert r["lengths"] == lengths
        for rope in ("plain", "scaled"):
            per_pos = r["position_loss"][rope]
            assert len(per_pos) == ctx * mult  # every position up to 8x
            assert all(math.isfinite(x) for x in per_pos)
            assert sorted(int(n) for n in r["needle"][rope]) == lengths
            for v in r["needle"][rope].values():
                assert math.isfinite(v["loss"])
                assert len(v["attention"]) == meta["layers"]
                assert all(0.0 <= a <= 1.0 for a in v["attention"])
    text = (out / "report.md").read_text()
    for heading in ("## Training loss", "## Validation loss by position", "## Needle recall",
                    "## Learned s and b"):
        assert heading in text
    # One seed: no spread and no verdicts; honest times; labels that name logged steps.
    assert "±" not in text.split("## Learned s and b")[0]
    assert "(lower)" not in text and "(higher)" not in text
    assert "nan" not in text and "0.0 min" not in text
    assert "@" not in text
    assert "loss, steps 36-40" in text and "steps 46-48" in text  # log every 5; 40 + 8


def _attention_pair(kind):
    torch.manual_seed(3)
    att = lm_model.Attention(32, 4, kind, s_init=0.4, b_init=0.3).double()
    if att.s is not None:
        with torch.no_grad():
            att.s.copy_(torch.tensor([0.2, 0.4, 0.6, 0.8]))
    q, k, v = (torch.randn(2, 40, 4, 8, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    return att, q, k, v


@pytest.mark.parametrize("kind", ["softmax", "ssmax", "ssmax_b"])
def test_attention_weights_reproduce_the_library_output(kind):
    """Attention.weights (plain torch, for the needle test) is the function the library
    computes: its weights times v equal the library's output row for row, a negative b
    included."""
    att, q, k, v = _attention_pair(kind)
    if kind == "ssmax_b":
        with torch.no_grad():
            att.b[1] = -0.5
    rows = torch.tensor([0, 7, 21, 39])
    x = torch.randn(2, 40, 32, dtype=torch.float64)
    cos, sin = lm_model.rope_tables(40, 8, 10000.0)
    cos, sin = cos.double(), sin.double()
    with torch.no_grad():
        q, k, v = att.project(x, cos, sin)
        library = att.attend(q, k, v.contiguous())[:, rows]
        w = att.weights(x, cos, sin, rows)
    assert w.shape == (2, 4, len(rows), 40)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, len(rows), dtype=torch.float64))
    assert w[:, :, 0, 1:].abs().max() == 0  # causal: row 0 sees key 0 only
    torch.testing.assert_close(torch.einsum("bhqk,bkhd->bqhd", w, v), library,
                               rtol=1e-9, atol=1e-11)


def test_switch_scale_equals_softmax_at_the_training_length():
    """s = 1/log(n_train): the row that sees n_train keys gets Softmax's weights."""
    att, q, k, v = _attention_pair("ssmax")
    with torch.no_grad():
        att.s.fill_(lm_model.s_for_switch(40))
    ssmax_out = att.attend(q, k, v)
    att.set_kind("softmax")
    softmax_out = att.attend(q, k, v)
    torch.testing.assert_close(ssmax_out[:, -1], softmax_out[:, -1], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(ssmax_out[:, 10], softmax_out[:, 10])


@needs_corpus
def test_training_is_deterministic_for_a_seed(tmp_path):
    cfg = lm_length.parse_args(["--smoke", "--out", str(tmp_path / "lm")])
    data, _, _ = corpus.load_corpus()
    torch.set_num_threads(1)
    curves = []
    for _ in range(2):
        torch.manual_seed(5)
        m = lm_length.new_model(cfg, "ssmax_b")
        curves.append(lm_length.train(m, data, cfg, 5, 6, "determinism"))
    assert curves[0] == curves[1]


# --- The command line: checked before anything runs or is written (cheap, no training) ---


def _lm_output(folder):
    """A folder holding an earlier run's output, plus a file of the user's."""
    (folder / "runs").mkdir(parents=True)
    (folder / "runs" / "softmax-seed0.json").write_text("{}")
    for name in ("meta.json", "results.json", "report.md", "train_loss.png"):
        (folder / name).write_text("old")
    (folder / "notes.txt").write_text("mine")
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        lm_length.parse_args(argv, check_corpus=False)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--ft-steps", "0"], "--ft-steps must be at least 1"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--jobs", "-2"], "--jobs must be at least 1"),
    (["--ctx", "18"], "--ctx must be at least 19"),
    (["--ctx", "0"], "--ctx must be at least 19"),
    (["--smoke", "--ctx", "24"], "--needle-code-max 8 does not fit a needle pair in --ctx 24"),
    (["--needle-code-max", "60"], "at most 59 capitals"),
    (["--needle-code-max", "4"], "--needle-code-max must be at least 5"),
    (["--needle-fraction", "1.5"], "--needle-fraction must lie in [0, 1]"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--stepz", "3"], "unrecognized arguments: --stepz"),
    (["--ou", "x"], "unrecognized arguments: --ou"),  # no abbreviations: the wrapper's --out
])
def test_bad_arguments_are_argparse_errors_before_any_file(argv, message, tmp_path, capsys):
    out = tmp_path / "new"
    assert message in _error(argv + ["--out", str(out)], capsys)
    assert not out.exists()


def test_the_needle_fits_at_the_smallest_accepted_context(tmp_path):
    """min_ctx is the real minimum: train_batch and the needle test work there and fail one
    byte shorter."""
    data = torch.randint(0, 256, (4000,), dtype=torch.uint8)
    for code_max in (5, 8, 11):
        ctx = lm_length.min_ctx(code_max)
        gen = torch.Generator().manual_seed(1)
        for _ in range(50):
            corpus.train_batch(data, 4, ctx, gen, 1.0, 2, code_max)
        corpus.needle_windows(data, 2, ctx, seed=3)
        with pytest.raises(RuntimeError):
            for _ in range(50):
                corpus.train_batch(data, 4, ctx - 1, gen, 1.0, 1, code_max)
        cfg = lm_length.parse_args(["--ctx", str(ctx), "--needle-code-max", str(code_max),
                                    "--out", str(tmp_path / f"c{code_max}")],
                                   check_corpus=False)
        assert cfg.ctx == ctx


def test_out_must_be_a_creatable_folder(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "exists and is not a folder" in _error(["--out", str(afile)], capsys)
    assert "cannot be created" in _error(["--out", str(afile / "sub")], capsys)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    assert "holds other files and no earlier lm output" in _error(["--out", str(foreign)],
                                                                  capsys)
    assert (foreign / "thesis.tex").exists()
    lm_length.parse_args(["--out", str(tmp_path / "a" / "b")], check_corpus=False)
    assert (tmp_path / "a" / "b").is_dir()  # made, empty, once everything else passed


def test_corpus_dir_errors_are_clear(tmp_path, capsys):
    def corpus_error(folder):
        with pytest.raises(SystemExit) as exit_info:
            lm_length.parse_args(["--corpus-dir", str(folder), "--out", str(tmp_path / "o")])
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    assert "no such folder" in corpus_error(tmp_path / "none")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no fortune files there" in corpus_error(empty)
    (empty / "blank").write_text("%\n\n%\n")
    assert "hold no text" in corpus_error(empty)
    small = tmp_path / "small"
    small.mkdir()
    (small / "few").write_text("".join(f"Fortune number {i}.\n%\n" for i in range(200)))
    assert "too little text" in corpus_error(small)
    assert not (tmp_path / "o").exists()


def test_help_documents_the_options_and_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        lm_length.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--ft-steps" in text and "(default 90; --long 300; --smoke 8); not scaled by --steps" \
        in text
    assert "one thread each (default 2)" in text
    assert "peak learning rate (default 0.003)" in text
    assert "initial s of the ssmax variants (default 0.43)" in text
    assert "folder of fortune files" in text and corpus.FORTUNE_DIR in text


def test_ft_steps_is_its_own_option(tmp_path):
    out = str(tmp_path / "o")
    cfg = lm_length.parse_args(["--steps", "20", "--out", out], check_corpus=False)
    assert (cfg.steps, cfg.ft_steps) == (20, 90)
    cfg = lm_length.parse_args(["--steps", "20", "--ft-steps", "7", "--out", out],
                               check_corpus=False)
    assert (cfg.steps, cfg.ft_steps) == (20, 7)
    assert lm_length.parse_args(["--smoke", "--out", out], check_corpus=False).ft_steps == 8


def test_a_new_run_replaces_only_its_own_output(tmp_path):
    out = tmp_path / "lm"
    _lm_output(out)
    lm_length.parse_args(["--out", str(out)], check_corpus=False)  # an lm folder: accepted
    lm_length.prepare_out(str(out))
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert left == ["notes.txt", "runs"]


def test_bad_flag_on_the_command_line_touches_nothing(tmp_path):
    out = tmp_path / "lm"
    before = _lm_output(out)
    for bad in (["--stepz", "3"], ["--steps", "0"], ["--ctx", "10"]):
        run = subprocess.run([sys.executable, os.path.join(LM, "lm_length.py"), "--out",
                              str(out)] + bad, capture_output=True, text=True, timeout=300)
        assert run.returncode == 2, run.stderr
        assert "error:" in run.stderr
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_wrapper_help_runs_nothing_and_deletes_nothing(tmp_path):
    out = tmp_path / "lm"
    before = _lm_output(out)
    run = subprocess.run(["bash", WRAPPER, "--out", str(out), "--help"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "--docs" in run.stdout and "--ft-steps" in run.stdout
    assert "report in" not in run.stdout + run.stderr
    assert "installing" not in run.stdout + run.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


# --- The report: labels and text from the numbers (synthetic runs, no training) ---


def _synthetic(seeds, log_every=10, steps=500, ft_steps=90, ctx=128):
    lengths = [ctx, 2 * ctx]

    def curve(start, n, base):
        points = list(range(start + log_every, start + n, log_every)) + [start + n]
        return [[s, base - s / 1000] for s in points]

    runs = []
    for seed in range(seeds):
        for v in report.VARIANTS:
            trained, tuned = v in report.TRAINED, v in report.FINE_TUNED
            base = 4.0 + 0.01 * seed + 0.02 * report.VARIANTS.index(v)
            pos = [base - 1 + 0.001 * i for i in range(2 * ctx)]
            needle = {str(n): {"loss": 5.0 + 0.01 * seed, "accuracy": 0.0,
                               "attention": [0.05, 0.04], "uniform": 7 / n} for n in lengths}
            runs.append(dict(
                variant=v, seed=seed, lengths=lengths,
                curve=curve(0, steps, base) if trained else
                curve(steps, ft_steps, base) if tuned else [],
                position_loss={"plain": pos, "scaled": pos},
                needle={"plain": needle, "scaled": needle},
                s=[[0.3, 0.4], [0.3, 0.4]] if v not in ("softmax", "softmax_ft") else [None],
                b=[[0.0, 0.1], [0.0, 0.1]] if v == "ssmax_b" else [None, None]))
    corpus_info = {"source": "test", "documents": 10, "train_bytes": 1000,
                   "validation_bytes": 100}
    meta = dict(ctx=ctx, steps=steps, ft_steps=ft_steps, log_every=log_every, seeds=seeds,
                eval_mult=2, jobs=2, layers=2, heads=2, dim=32, batch=4, lr=3e-3, s_init=0.43,
                needle_fraction=0.5, needle_pairs=1, needle_code_max=5, val_windows=2,
                needle_trials=2, preset="default", torch="x", corpus=corpus_info)
    return runs, meta


def test_training_loss_columns_name_the_steps_they_average():
    runs, meta = _synthetic(2)
    groups = report.by_variant(runs)
    table = report.training_table(groups, 500)
    # marks 125, 250, 500, logged every 10: the nearest points (a tie goes to the earlier)
    # are the means over steps 111-120, 241-250 and 491-500 (the old labels: @125, @250, @500)
    head = table.splitlines()[0]
    assert head == ("| variant | loss, steps 111-120 | loss, steps 241-250 "
                    "| loss, steps 491-500 |")
    ft = report.training_table(groups, 90, 500, fine_tune=True).splitlines()[0]
    assert ft == "| variant | loss, steps 511-520 | loss, steps 531-540 | loss, steps 581-590 |"
    summary = report.summary_table(groups, meta).splitlines()[0]
    assert "@" not in summary and "steps 491-500 (fine-tunes: steps 581-590)" in summary
    # a value is the one logged at the step its label names
    row = next(line for line in table.splitlines() if line.startswith("| Softmax |"))
    assert f"{(4.0 - 0.25 + 4.01 - 0.25) / 2:.3f}" in row  # step 250 of seeds 0 and 1


def test_one_seed_shows_no_spread_and_no_verdict(tmp_path):
    runs, meta = _synthetic(1)
    assert report.fmt([1.5]) == "1.500" and report.fmt([1.0, 2.0]).startswith("1.500 ± ")
    groups = report.by_variant(runs)
    assert "±" not in report.summary_table(groups, meta)
    text = report.assessment(groups, meta["ctx"])
    assert "(lower)" not in text and "(higher)" not in text and "no clear" not in text
    assert "near ln 26" not in text and "Softmax 5.00" in text
    runs2, _ = _synthetic(2)
    assert "(higher)" in report.assessment(report.by_variant(runs2), meta["ctx"])  # 2 seeds


def test_setup_text_follows_the_settings_and_is_honest_about_time():
    _, meta = _synthetic(1)
    text = report.setup_text(meta)  # no wall_s, no cpu_s: a partial run
    assert "nan" not in text and "wall time not recorded" in text and "CPU time" not in text
    assert "'art', 'ascii-art', 'translate-me'" in text
    assert "'#' + 5 random capitals + '#'" in text
    meta.update(needle_code_max=8, needle_pairs=2, wall_s=34.0, cpu_s=6.0)
    text = " ".join(report.setup_text(meta).split())
    assert "'#' + 5 to 8 random capitals + '#'" in text and "2 planted needle pairs" in text
    assert "wall time 34 s" in text and "about 3 s of wall time" in text
    assert "0.0 min" not in text
    meta.update(wall_s=2460.0, cpu_s=1350.0)
    text = " ".join(report.setup_text(meta).split())
    assert "wall time 41.0 min" in text and "CPU time 22.5 min" in text
