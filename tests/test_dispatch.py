"""The dispatch benchmark family (issue 12): its cases, the interleaved timing, its targets."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import interleave, report_data, report_tables, runner, variants  # noqa: E402
from benchmarks.common import Options  # noqa: E402

# the cpu extension is built wherever the suite runs (conftest fails otherwise); only a
# pure-Python install has no cpu backend to time
pytestmark = pytest.mark.skipif(os.environ.get("GAN_FAST_NO_EXT") == "1",
                                reason="GAN_FAST_NO_EXT=1: pure-Python install, no cpu backend")


def _opts(**kw):
    return Options(device="cpu", ops=["dispatch"], min_time=0.01, warmup=1, **kw).resolve()


def test_cases():
    cases = {c.label: c for c in runner.plan(_opts())}
    assert set(cases) == {"G-train", "G-eval", "D-train", "D-eval", "G-train-fuse", "G-eval-fuse",
                          "D-train-fuse", "D-eval-fuse", "bce-g", "bce-d", "G-train-conv-only",
                          "G-eval-conv-only", "D-train-conv-only", "D-eval-conv-only",
                          "in-train-fuse", "in-eval-fuse", "act-train-fuse", "act-eval-fuse"}
    assert all(c.threads == 1 and c.interleaved and c.op == "dispatch" for c in cases.values())
    assert cases["G-eval"].modes == ("fwd",) and cases["D-train"].modes == ("fwd+bwd",)
    compiled = variants.parse("compile")
    assert cases["G-train-fuse"].variant_filter(compiled, _opts()) and cases["G-train"].variant_filter is None
    fused, eager = variants.parse("gan_fast:cpu"), variants.parse("eager")
    only = cases["D-eval-conv-only"].variant_filter
    assert only(fused, _opts()) and only(eager, _opts()) is None
    chain = cases["in-train-fuse"].variant_filter
    assert chain(compiled, _opts()) and chain(fused, _opts()) is None


@pytest.mark.parametrize("label", ["bce-g", "bce-d", "G-train", "D-eval", "D-train-fuse",
                                   "in-train-fuse", "act-eval-fuse"])
def test_interleaved_records(label):
    opts = _opts()
    case = next(c for c in runner.plan(opts) if c.label == label)
    threads = torch.get_num_threads()
    recs = interleave.run_case(case, [variants.parse("eager"), variants.parse("gan_fast:cpu")], opts,
                               lambda m: None)
    assert torch.get_num_threads() == threads
    assert [r["variant"] for r in recs] == ["eager", "gan_fast:cpu"]
    for r in recs:
        assert r["status"] == "ok", r.get("traceback")
        assert r["threads"] == 1
        st = r["timings"][case.modes[0]]
        assert st["samples"] >= interleave.MIN_REPS and st["median_ms"] > 0
        assert "interleaved" in st["method"]
    assert recs[1]["max_rel_diff_vs_eager"] < 1e-5


def _result(ms):
    cases = []
    for label, mode, eager, fused in ms:
        cases.append({"op": "dispatch", "case": label, "batch": 2, "dtype": "fp32", "format": "-", "shape": "(2,)",
                      "modes": [mode], "runs": [
                          {"variant": v, "status": "ok", "timings": {mode: {"median_ms": t, "p20_ms": t, "p80_ms": t}}}
                          for v, t in (("eager", eager), ("gan_fast:cpu", fused))]})
    return {"cases": cases, "options": {"variants": ["eager", "gan_fast:cpu"]}, "env": {}, "variants": {}}


def test_targets():
    rows = report_data.targets(_result([("G-train", "fwd+bwd", 0.10, 0.069), ("D-eval", "fwd", 0.05, 0.04),
                                        ("bce-g", "fwd+bwd", 0.030, 0.029)]))
    by = {r["target"].split(" <=")[0]: r for r in rows}
    block, loss = by["dispatch: a block call (train fwd+bwd, eval fwd)"], by["dispatch: a GANLoss call (fwd+bwd)"]
    assert not block["ok"] and "max 0.80x (D-eval b2)" in block["detail"]
    assert loss["ok"] and "over 1 cases" in loss["detail"]
    assert "dispatch" in report_tables.markdown(_result([("bce-d", "fwd+bwd", 0.06, 0.03)]))
