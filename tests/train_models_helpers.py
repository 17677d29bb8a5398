"""Shared set-up of the pix2pix and VAE trainer tests (tests/test_train_pix2pix.py,
tests/test_train_vae.py): tiny runs, and the straight-vs-resumed comparison the DCGAN
trainer's tests make (tests/test_train_checkpoint.py)."""
import json
from pathlib import Path

from test_train_checkpoint import _assert_same_state

from gan_fast.train import checkpoint as C
from gan_fast.train.config import TrainConfig
from gan_fast.train.trainers import make_trainer

# the command-line form of tiny() (with --model and --out to add)
TINY_ARGS = ["--data", "synthetic", "--synthetic-n", "40", "--nz", "6", "--ngf", "4",
             "--ndf", "4", "--batch-size", "4", "--no-progress", "--threads", "1",
             "--sample-every", "0", "--eval-samples", "32"]


def tiny(model: str, out, **kw) -> TrainConfig:
    """A run of seconds: 40 synthetic images (36 to train, 4 held out), widths 4."""
    base = dict(model=model, task="inpaint" if model == "pix2pix" else None,
                data="synthetic", synthetic_n=40, image_size=32, nz=6, ngf=4, ndf=4,
                batch_size=4, steps=7, out=str(out), log_every=3, sample_every=0,
                checkpoint_every=0, eval=False, progress=False, seed=5, threads=1)
    if model == "vae":
        base.update(lr_g=1e-3, lr_d=1e-3, beta1=0.9)
    base.update(kw)
    return TrainConfig(**base)


def lines(out, name="metrics.jsonl") -> list[str]:
    return (Path(out) / name).read_text().splitlines()


def assert_resume_is_exact(model: str, tmp_path, k: int, **kw) -> list[dict]:
    """7 steps straight == k steps + resume to 7 (weights, optimizer states, data order,
    noise generator; metrics.jsonl byte for byte). Returns the straight run's records."""
    straight = make_trainer(tiny(model, tmp_path / "a", **kw))
    straight.run()
    make_trainer(tiny(model, tmp_path / "b", steps=k, **kw)).run()
    resumed = make_trainer(tiny(model, tmp_path / "b", resume=True, **kw))
    assert resumed.step == k
    resumed.run()
    _assert_same_state(straight.state(), resumed.state())
    _assert_same_state(C.load(tmp_path / "a"), C.load(tmp_path / "b"))
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == \
        (tmp_path / "b" / "metrics.jsonl").read_bytes()
    recs = [json.loads(x) for x in lines(tmp_path / "a")]
    assert [r["step"] for r in recs] == [3, 6, 7]
    return recs


OPTIONS = [["--dtype", "bf16", "--channels-last"], ["--dtype", "fp16"],
           ["--backend", "reference", "--layers", "fused"]]


def assert_options_run(model: str, out, extra: list[str]) -> None:
    """A 2-step run with ``extra`` through the command line writes finite records."""
    from gan_fast.train.cli import main
    rc = main(["train", "--model", model, "--steps", "2", "--log-every", "1", "--no-eval",
               "--out", str(out)] + TINY_ARGS + extra)
    assert rc == 0
    recs = [json.loads(x) for x in lines(out)]
    assert len(recs) == 2 and all(v == v for r in recs for v in r.values())  # no NaN
