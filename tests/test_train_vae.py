"""``gan-fast train --model vae``: the loss, a tiny run with its evaluation, an exact
resume, and the option checks."""
import json

import pytest
import torch
import torch.nn.functional as F
from train_models_helpers import (OPTIONS, TINY_ARGS, assert_options_run,
                                  assert_resume_is_exact, tiny)

from gan_fast.train.cli import main
from gan_fast.train.models_vae import to_image, vae_terms
from gan_fast.train.trainers import make_trainer


def test_loss_terms_are_pytorch_examples_vae_loss():
    """BCE of sigmoid(logits) against the pixels in [0, 1], summed, plus the Gaussian KL,
    per image; to_image is 2 sigmoid - 1."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    x = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    mu, logvar = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    bce, kl = vae_terms(logits, x, mu, logvar)
    p = torch.sigmoid(logits)
    want_bce = F.binary_cross_entropy(p, (x + 1) / 2, reduction="sum") / 3
    want_kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum() / 3
    assert bce.item() == pytest.approx(want_bce.item(), rel=1e-5)
    assert kl.item() == pytest.approx(want_kl.item(), rel=1e-5)
    torch.testing.assert_close(to_image(logits), 2 * p - 1)


def test_tiny_run_writes_the_records_and_evaluates(tmp_path):
    out = tmp_path / "run"
    s = make_trainer(tiny("vae", out, eval=True, eval_samples=40, sample_every=5,
                          layers="fused")).run()
    for name in ("metrics.jsonl", "timing.jsonl", "checkpoint.pt", "summary.json",
                 "samples_000000.png", "samples_000005.png", "samples_final.png"):
        assert (out / name).is_file(), name
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert list(rec) == ["step", "loss", "recon_bce", "kl", "mse", "epoch"]
    assert rec["loss"] == pytest.approx(rec["recon_bce"] + rec["kl"], rel=1e-6)
    e = s["eval"]
    assert s["model"] == "vae" and s["loss"] == "elbo" and e["n_held_out"] == 4
    assert e["elbo"] == pytest.approx(-(e["recon_bce"] + e["kl"]), abs=2e-3)
    assert 0 < e["recon_mse"] < 1 and e["fd"] > 0 and e["n"] == 40
    assert {"fd_untrained", "fd_real_halves", "classes"} <= set(e)
    assert [len(s["fuse"][m]["fused"]) for m in ("decoder", "encoder")] == [3, 3]


@pytest.mark.parametrize("k", [3, 5])
def test_resume_is_exact(tmp_path, k):
    """Off and on the log interval (3); eps comes from the checkpointed noise
    generator."""
    recs = assert_resume_is_exact("vae", tmp_path, k, layers="fused")
    assert all(r["kl"] > 0 for r in recs)


def test_cli_run_and_option_checks(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "vae", "--steps", "2", "--out", str(out)]
                + TINY_ARGS) == 0
    printed = capsys.readouterr().out
    assert "held-out images (4): ELBO" in printed and "Fréchet distance" in printed
    for argv, message in ((["--loss", "hinge"], "not to --model vae"),
                          (["--clip-d", "0.1"], "not to --model vae"),
                          (["--kl-weight", "nan"], "--kl-weight must be"),
                          (["--sync-bn"], "implemented for --model dcgan only")):
        try:
            rc = main(["train", "--model", "vae", "--steps", "1",
                       "--out", str(tmp_path / "x")] + TINY_ARGS + argv)
        except SystemExit as e:
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2 and message in err, (argv, err)
    # a resume needs no --model: the checkpoint's settings come back
    assert main(["train", "--resume", "--steps", "3", "--out", str(out),
                 "--no-progress", "--no-eval"]) == 0
    assert json.loads((out / "summary.json").read_text())["model"] == "vae"


@pytest.mark.parametrize("extra", OPTIONS, ids=lambda x: " ".join(x))
def test_run_options(extra, tmp_path):
    assert_options_run("vae", tmp_path, extra)
