"""``gan-fast train --model pix2pix``: the pairs, PSNR/SSIM, a tiny run, an exact
resume, and the option checks."""
import json

import numpy as np
import pytest
import torch
from train_models_helpers import (OPTIONS, TINY_ARGS, assert_options_run,
                                  assert_resume_is_exact, tiny)

from gan_fast.train.cli import main
from gan_fast.train.data import HOLE_FILL, corrupt, split_held_out
from gan_fast.train.image_metrics import gaussian_window, psnr, ssim
from gan_fast.train.trainers import make_trainer


# ------------------------------------------------------------------ PSNR, SSIM
def _ssim_numpy(x: np.ndarray, y: np.ndarray, L: float = 1.0) -> float:
    """Wang et al.'s ssim_index.m, written out with numpy loops ('valid' filtering)."""
    w = gaussian_window().numpy()
    k = w.shape[0]
    h = x.shape[0] - k + 1
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for i in range(h):
        for j in range(x.shape[1] - k + 1):
            px, py = x[i:i + k, j:j + k], y[i:i + k, j:j + k]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cxy + c2)
                        / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_and_psnr_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 20, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    got = ssim(x, y)
    for i in range(3):
        assert got[i].item() == pytest.approx(_ssim_numpy(x[i, 0].numpy(), y[i, 0].numpy()),
                                              abs=1e-12)
    mse = ((x - y) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(psnr(x, y), 10 * torch.log10(1 / mse))
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert torch.equal(psnr(x, x), torch.full((3,), 100.0, dtype=torch.float64))
    assert (got < 1).all() and torch.allclose(ssim(y, x), got)  # symmetric
    with pytest.raises(ValueError, match="smaller than"):
        ssim(x[..., :8, :8], y[..., :8, :8])


# ------------------------------------------------------------------ pairs
def test_pairs_inpaint_one_square_and_denoise_clipped_noise():
    clean = torch.rand(6, 1, 32, 32) * 2 - 1
    a = corrupt(clean, "inpaint", torch.Generator().manual_seed(1))
    changed = (a != clean)
    for i in range(6):
        rows, cols = changed[i, 0].any(1).nonzero(), changed[i, 0].any(0).nonzero()
        assert rows.numel() == cols.numel() == 12  # a 12x12 square (3/8 of 32) ...
        box = a[i, 0, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert (box == HOLE_FILL).all()  # ... filled with grey, in the central part
        assert 4 <= rows.min() and rows.max() < 28 and 4 <= cols.min() and cols.max() < 28
    assert torch.equal(a, corrupt(clean, "inpaint", torch.Generator().manual_seed(1)))
    n = corrupt(clean, "denoise", torch.Generator().manual_seed(1))
    assert n.abs().max() <= 1 and 0.3 < (n - clean).std() < 0.5
    with pytest.raises(ValueError, match="task"):
        corrupt(clean, "deblur", torch.Generator())
    train, held = split_held_out(5000, seed=0)
    assert len(held) == 500 and len(train) == 4500
    assert torch.cat([train, held]).sort().values.equal(torch.arange(5000))


# ------------------------------------------------------------------ the trainer
def test_tiny_run_writes_the_records_and_scores_the_held_out_pairs(tmp_path):
    out = tmp_path / "run"
    s = make_trainer(tiny("pix2pix", out, task="denoise", eval=True, eval_samples=100,
                          sample_every=4, layers="fused")).run()
    for name in ("metrics.jsonl", "timing.jsonl", "checkpoint.pt", "summary.json",
                 "samples_000000.png", "samples_000004.png", "samples_final.png"):
        assert (out / name).is_file(), name
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert list(rec) == ["step", "loss_d", "loss_g", "l1", "d_real", "d_fake", "epoch"]
    e = s["eval"]
    assert e["n"] == 4 and s["held_out"] == 4 and s["model"] == "pix2pix"
    assert 0 < e["ssim_input"] < 1 and 5 < e["psnr_input"] < 20  # noise of std 0.25
    assert set(s["fuse"]) == {"generator", "discriminator"}
    assert len(s["fuse"]["discriminator"]["fused"]) >= 2
    assert json.loads((out / "summary.json").read_text())["eval"] == e


@pytest.mark.parametrize("k", [2, 4])
def test_resume_is_exact(tmp_path, k):
    """Off and on the log interval (3); the pairs' random squares come from the
    checkpointed noise generator."""
    recs = assert_resume_is_exact("pix2pix", tmp_path, k, layers="fused")
    assert all(r["l1"] > 0 for r in recs)


def test_cli_run_and_bad_tasks(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "pix2pix", "--task", "inpaint", "--steps", "2",
                 "--out", str(out)] + TINY_ARGS) == 0
    printed = capsys.readouterr().out
    assert "held-out pairs (4): PSNR" in printed and "corrupted inputs: PSNR" in printed
    cfg = json.loads((out / "summary.json").read_text())
    assert cfg["task"] == "inpaint" and cfg["steps"] == 2
    for argv, message in ((["--task", "deblur"], "invalid choice: 'deblur'"),
                          (["--model", "dcgan", "--task", "denoise"],
                           "--task applies to --model pix2pix only"),
                          (["--model", "vae", "--task", "inpaint"],
                           "--task applies to --model pix2pix only"),
                          (["--model", "pix2pix", "--cuda-graphs"],
                           "implemented for --model dcgan only"),
                          (["--model", "pix2pix", "--l1-weight", "-1"], "--l1-weight must be")):
        try:
            rc = main(["train", "--steps", "1", "--out", str(tmp_path / "x")] + TINY_ARGS
                      + argv)
        except SystemExit as e:  # argparse
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2 and message in err, (argv, err)
    with pytest.raises(ValueError, match="needs --task inpaint|denoise"):
        make_trainer(tiny("pix2pix", tmp_path / "y", task=None))
    assert main(["eval", str(out)]) == 2
    assert "is a --model pix2pix run's" in capsys.readouterr().err


@pytest.mark.parametrize("extra", OPTIONS, ids=lambda x: " ".join(x))
def test_run_options(extra, tmp_path):
    assert_options_run("pix2pix", tmp_path, extra)
