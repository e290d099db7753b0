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
import model as lm_model  # noqa: E402

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
    report = (out / "report.md").read_text()
    for heading in ("## Training loss", "## Validation loss by position", "## Needle recall",
                    "## Learned s and b"):
        assert heading in report


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
def test_training_is_deterministic_for_a_seed():
    import lm_length

    cfg = lm_length.parse_args(["--smoke"])
    data, _, _ = corpus.load_corpus()
    torch.set_num_threads(1)
    curves = []
    for _ in range(2):
        torch.manual_seed(5)
        m = lm_length.new_model(cfg, "ssmax_b")
        curves.append(lm_length.train(m, data, cfg, 5, 6, "determinism"))
    assert curves[0] == curves[1]
