"""The command line: argument errors, and a tiny end-to-end run with evaluation."""
import json

import pytest

from gan_fast.train.cli import main

TINY = ["--data", "synthetic", "--synthetic-n", "32", "--nz", "8", "--ngf", "4", "--ndf", "4",
        "--batch-size", "8", "--no-progress", "--threads", "1"]


@pytest.mark.parametrize("args, message", [
    (["--loss", "l1"], "invalid choice: 'l1'"),
    (["--steps", "-1"], "must be >= 0"),
    (["--steps", "ten"], "not an integer"),
    (["--image-size", "48"], "invalid choice: 48"),
    (["--batch-size", "0"], "must be >= 1"),
    (["--lr", "0"], "must be > 0"),
    (["--dtype", "fp8"], "invalid choice: 'fp8'"),
    (["--layers", "magic"], "invalid choice: 'magic'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_argument_errors(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train"] + args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--data", "folder"], "--data folder needs --data-dir"),
    (["--data", "folder", "--data-dir", "/nonexistent/images"], "does not exist"),
    (["--cuda-graphs", "--device", "cpu"], "--cuda-graphs needs a CUDA device"),
    (["--loss", "hinge", "--label-smoothing", "0.1"], "applies to --loss bce only"),
    (["--batch-size", "1"], "--batch-size must be >= 2"),
    (["--batch-size", "64", "--synthetic-n", "10"], "larger than the data set"),
    (["--resume"], "no checkpoint"),
])
def test_setting_errors_exit_2_with_a_message(args, message, tmp_path, capsys):
    rc = main(["train"] + TINY + args + ["--out", str(tmp_path / "run")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("gan-fast train: error:") and message in err


def test_tiny_end_to_end_run_resume_and_eval(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train"] + TINY + ["--steps", "4", "--log-every", "2", "--sample-every", "2",
                                  "--eval-samples", "64", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert "trained 4 steps" in stdout and "Fréchet distance" in stdout
    names = {p.name for p in out.iterdir()}
    assert {"checkpoint.pt", "metrics.jsonl", "summary.json", "samples_000000.png",
            "samples_000002.png", "samples_000004.png", "samples_final.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4]
    assert set(recs[0]) == {"step", "loss_d", "loss_g", "d_real", "d_fake", "epoch"}
    timing = [json.loads(x) for x in (out / "timing.jsonl").read_text().splitlines()]
    assert [r["step"] for r in timing] == [2, 4]
    assert {"step_time_s", "images_per_s", "time_s"} <= set(timing[0])
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 4 and s["eval"]["fd"] >= 0 and len(s["eval"]["classes"]["counts"]) == 10
    assert (out / "samples_final.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # an existing run is not overwritten by accident
    assert main(["train"] + TINY + ["--steps", "4", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    # --resume takes the checkpoint's settings; only --steps is needed
    assert main(["train", "--resume", "--steps", "6", "--no-eval", "--no-progress",
                 "--out", str(out)]) == 0
    assert "trained 6 steps (2 in this run)" in capsys.readouterr().out
    # ... and refuses a change of model
    assert main(["train", "--resume", "--steps", "8", "--ngf", "16", "--out", str(out)]) == 2
    assert "ngf: checkpoint 4, now 16" in capsys.readouterr().err

    res = tmp_path / "eval.json"
    assert main(["eval", str(out), "--n", "64", "--untrained", "--json", str(res),
                 "--grid", str(tmp_path / "grid.png")]) == 0
    assert "untrained G" in capsys.readouterr().out
    r = json.loads(res.read_text())
    assert r["step"] == 6 and "fd_untrained" in r and (tmp_path / "grid.png").exists()


def test_eval_errors(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval"])


def test_python_dash_m_help(monkeypatch, capsys):
    """``python -m gan_fast.train --help`` (run in-process: a subprocess would pay for
    importing torch again)."""
    import runpy
    import sys
    monkeypatch.setattr(sys, "argv", ["gan_fast.train", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("gan_fast.train", run_name="__main__")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "gan-fast train" in out and "--layers" in out and "--cuda-graphs" in out
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0 and "CHECKPOINT" in capsys.readouterr().out.upper()


@pytest.mark.parametrize("extra", [
    ["--dtype", "bf16", "--channels-last"],
    ["--dtype", "fp16"],
    ["--loss", "wgan", "--clip-d", "0.01", "--loss-impl", "stock"],
    ["--image-size", "64", "--loss", "lsgan", "--lr", "1e-3"],
])
def test_run_options(extra, tmp_path, capsys):
    rc = main(["train"] + TINY + ["--steps", "2", "--no-eval", "--sample-every", "0",
                                  "--out", str(tmp_path)] + extra)
    assert rc == 0, capsys.readouterr().err
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert recs and all(r["loss_d"] == r["loss_d"] for r in recs)  # not NaN
