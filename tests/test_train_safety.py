"""The trainer loses no work: signals, earlier runs' files, killed writes, damaged
checkpoints, resumes off the log interval, non-finite losses, and one-line errors."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gan_fast.train import checkpoint as C
from gan_fast.train.cli import main
from gan_fast.train.guard import Interrupted, NonFiniteError
from gan_fast.train.loop import Trainer, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data", "synthetic", "--synthetic-n", "32", "--nz", "8", "--ngf", "4", "--ndf", "4",
        "--batch-size", "8", "--no-progress", "--threads", "1", "--no-eval",
        "--sample-every", "0", "--layers", "stock", "--loss-impl", "stock"]


def tiny(out, **kw) -> TrainConfig:
    base = dict(data="synthetic", synthetic_n=40, image_size=32, nz=8, ngf=4, ndf=4,
                batch_size=8, steps=9, out=str(out), log_every=4, sample_every=0,
                checkpoint_every=0, eval=False, progress=False, layers="stock",
                loss_impl="stock", seed=3, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _lines(out, name="metrics.jsonl"):
    return (Path(out) / name).read_text().splitlines()


def _poison_at(monkeypatch, step, action):
    """Makes ``action(trainer)`` run inside the training step number ``step``."""
    real = Trainer._train_step

    def step_fn(self, r, z):
        out = real(self, r, z)
        if self.step + 1 == step:
            action(self)
        return out
    monkeypatch.setattr(Trainer, "_train_step", step_fn)


# ------------------------------------------------------------------ resume: same log
@pytest.mark.parametrize("k", [5, 6])
def test_metrics_after_resume_off_the_interval_equal_a_straight_run(tmp_path, k):
    """9 steps straight vs k steps + resume to 9, --log-every 4 (records at 4, 8 and the
    tail 9): metrics.jsonl is the same, line for line, and holds no timing."""
    Trainer(tiny(tmp_path / "a")).run()
    Trainer(tiny(tmp_path / "b", steps=k)).run()
    Trainer(tiny(tmp_path / "b", resume=True)).run()
    assert _lines(tmp_path / "a") == _lines(tmp_path / "b")
    assert [json.loads(x)["step"] for x in _lines(tmp_path / "b")] == [4, 8, 9]
    assert "time" not in _lines(tmp_path / "a")[0]


# ------------------------------------------------------------------ signals
def test_sigint_saves_a_checkpoint_restores_handlers_and_resumes(tmp_path, monkeypatch):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    _poison_at(monkeypatch, 3, lambda t: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(Interrupted) as e:
        Trainer(tiny(tmp_path / "b")).run()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert e.value.step == 3 and e.value.path == tmp_path / "b" / "checkpoint.pt"
    assert C.load(e.value.path)["step"] == 3
    monkeypatch.undo()
    Trainer(tiny(tmp_path / "a")).run()
    Trainer(tiny(tmp_path / "b", resume=True)).run()
    assert _lines(tmp_path / "a") == _lines(tmp_path / "b")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_the_cli_saves_and_says_where(tmp_path, sig):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gan_fast.train"] + TINY + [
        "--steps", "1000000", "--log-every", "1", "--out", str(out)]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        line = p.stdout.readline()  # the first logged step
        assert line.startswith("step"), line + p.stderr.read()
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 128 + sig, err
    assert err.count("\n") == 1 and f"checkpoint saved to {out / 'checkpoint.pt'}" in err
    ck = C.load(out)
    assert ck["step"] >= 1
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


# ------------------------------------------------------------------ the run folder
def test_fresh_run_refuses_an_earlier_runs_files_and_overwrite_clears_only_them(tmp_path):
    # a run that died before its first checkpoint: a metrics log and a sample grid
    (tmp_path / "metrics.jsonl").write_text('{"step": 99, "loss_d": 1.0}\n')
    (tmp_path / "samples_000099.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="metrics.jsonl.*--overwrite"):
        Trainer(tiny(tmp_path, steps=4))
    with pytest.raises(FileNotFoundError, match="no checkpoint.*metrics.jsonl"):
        Trainer(tiny(tmp_path, steps=4, resume=True))
    Trainer(tiny(tmp_path, steps=4, overwrite=True)).run()
    assert [json.loads(x)["step"] for x in _lines(tmp_path)] == [4]
    assert not (tmp_path / "samples_000099.png").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_stale_temporary_files_are_removed(tmp_path):
    stale = tmp_path / ".checkpoint.pt.k1ll3d00.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".notes.txt.abc.tmp"  # not the trainer's
    other.write_text("x")
    Trainer(tiny(tmp_path, steps=2))  # at start
    assert not stale.exists() and other.exists()
    # and at the next write of the same file
    p = tmp_path / "ck.pt"
    (tmp_path / ".ck.pt.zzzzzzzz.tmp").write_bytes(b"")
    C.atomic_save({"a": torch.ones(1)}, p)
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".tmp")) == [other.name]


# ------------------------------------------------------------------ checksums
def _flip_a_tensor_byte(path: Path, tensor: torch.Tensor) -> None:
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    at = data.find(raw)
    assert at > 0 and data.find(raw, at + 1) < 0
    data[at + len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_flipped_bytes_are_refused_by_resume_and_eval(tmp_path, capsys):
    Trainer(tiny(tmp_path, steps=2)).run()
    path = tmp_path / "checkpoint.pt"
    ck = C.load(path)
    assert len(ck["checksum"]["sha256"]) == 64
    _flip_a_tensor_byte(path, ck["generator"]["main.0.weight"])
    with pytest.raises(ValueError, match="checkpoint.pt is damaged"):
        C.load(path)
    with pytest.raises(ValueError, match="damaged"):
        Trainer(tiny(tmp_path, steps=4, resume=True))
    assert main(["eval", str(tmp_path), "--n", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {path} is damaged" in err


def test_a_checkpoint_without_checksum_loads_with_a_warning(tmp_path):
    Trainer(tiny(tmp_path, steps=2)).run()
    path = tmp_path / "checkpoint.pt"
    old = {k: v for k, v in C.load(path).items() if k not in ("checksum", "metrics_log")}
    C.atomic_save(dict(old, version=1), path)  # what format 1 wrote
    said = []
    assert C.load(path, warn=said.append)["step"] == 2
    assert len(said) == 1 and "no checksum" in said[0]
    t = Trainer(tiny(tmp_path, steps=4, resume=True), log=said.append)
    assert t.step == 2 and "no checksum" in said[-1]
    C.atomic_save(dict(old, version=2), path)  # format 2 always has one
    with pytest.raises(ValueError, match="damaged"):
        C.load(path)


# ------------------------------------------------------------------ non-finite values
def test_a_non_finite_loss_stops_with_the_last_finite_state_saved(tmp_path, monkeypatch):
    def poison(t):
        with torch.no_grad():
            next(t.d.parameters()).fill_(float("nan"))
    _poison_at(monkeypatch, 6, poison)
    with pytest.raises(NonFiniteError, match="step 6.*holds step 4"):
        Trainer(tiny(tmp_path, log_every=2)).run()
    ck = C.load(tmp_path)
    assert ck["step"] == 4
    assert all(v.isfinite().all() for v in ck["discriminator"].values()
               if v.is_floating_point())
    assert [json.loads(x)["step"] for x in _lines(tmp_path)] == [2, 4]


def test_cli_exits_1_on_a_non_finite_loss(tmp_path, monkeypatch, capsys):
    _poison_at(monkeypatch, 2, lambda t: next(t.g.parameters()).data.fill_(float("inf")))
    assert main(["train"] + TINY + ["--steps", "5", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: a loss or weight became non-finite" in err
    assert C.load(tmp_path)["step"] == 0


# ------------------------------------------------------------------ one-line errors
def _wrong_shape_checkpoint(out: Path) -> None:
    Trainer(tiny(out, steps=1)).run()
    ck = C.load(out)
    w = ck["generator"]["main.0.weight"]
    ck["generator"]["main.0.weight"] = torch.zeros(w.shape[0] + 1, *w.shape[1:])
    C.save(ck, out / "checkpoint.pt")


EXPECTED = {"lr inf": "must be a finite number", "lr 1e300": "must be at most 1e+06",
            "device": "--device foo: not a device", "backend": "--backend cuda cannot run here",
            "out": "cannot write there", "resume+overwrite": "either --resume or --overwrite",
            "wrong shape": "checkpoint.pt: the generator does not fit the model",
            "eval wrong shape": "checkpoint.pt: the generator does not fit the model",
            "eval device": "--device foo: not a device"}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_every_bad_option_is_one_error_line_and_exit_2(case, tmp_path, capsys):
    out = tmp_path / "run"
    args = {"lr inf": ["--lr", "inf"], "lr 1e300": ["--lr", "1e300"],
            "device": ["--device", "foo"], "backend": ["--backend", "cuda", "--device", "cpu"],
            "out": ["--out", str(tmp_path / "file" / "run")],
            "resume+overwrite": ["--resume", "--overwrite"]}.get(case, [])
    (tmp_path / "file").write_text("a file, not a folder")
    if "wrong shape" in case:
        _wrong_shape_checkpoint(out)
    elif case in ("eval device", "resume+overwrite"):
        Trainer(tiny(out, steps=1)).run()
    if case.startswith("eval"):
        argv = ["eval", str(out), "--n", "16"] + (["--device", "foo"] if "device" in case else [])
    elif case == "wrong shape":  # the checkpoint's settings
        argv = ["train", "--resume", "--steps", "2", "--no-progress", "--out", str(out)]
    else:
        argv = ["train"] + TINY + ["--steps", "2", "--out", str(out)] + args
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    errors = [x for x in err.splitlines() if "error:" in x]
    assert len(errors) == 1 and "Traceback" not in err, err
    if not case.startswith("lr"):  # argparse's usage lines come before its error line
        assert err.count("\n") == 1, err
    assert EXPECTED[case] in errors[0]
