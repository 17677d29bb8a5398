"""The trainer under torchrun (issue 15): 2 gloo processes for a few steps with --sync-bn,
rank 0 alone writing, the same losses as one process with the same global batch (the
fused SyncBatchNorm's statistics are the global batch's), then a resume."""
import json
import os
import subprocess
import sys

import torch

ARGS = ["--data", "synthetic", "--synthetic-n", "64", "--batch-size", "8", "--nz", "8",
        "--ngf", "4", "--ndf", "4", "--log-every", "1", "--sample-every", "2",
        "--checkpoint-every", "2", "--eval-samples", "0", "--no-progress"]


def _run(cmd, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _torchrun(*args):
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", "2", "-m", "gan_fast.train", *args])


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_two_processes_sync_bn_matches_one_and_resumes(tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    r = _torchrun(*ARGS, "--steps", "3", "--sync-bn", "--out", str(ddp))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("trained 3 steps") == 1  # rank 0 alone reports
    r = _run([sys.executable, "-m", "gan_fast.train", *ARGS, "--steps", "3", "--out", str(single)])
    assert r.returncode == 0, r.stderr[-3000:]
    got, want = _metrics(ddp), _metrics(single)
    assert [m["step"] for m in got] == [1, 2, 3]  # one writer: each record once
    for a, b in zip(got, want):
        for k in ("loss_d", "loss_g", "d_real", "d_fake"):
            assert abs(a[k] - b[k]) < 1e-4, (k, a, b)
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch_size"] == 8
    assert sorted(p.name for p in ddp.glob("samples_0*.png")) == ["samples_000000.png",
                                                                  "samples_000002.png"]
    ck = torch.load(ddp / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 3 and ck["extra"]["world_size"] == 2 and ck["config"]["sync_bn"]

    r = _torchrun("--resume", "--steps", "5", "--out", str(ddp))
    assert r.returncode == 0, r.stderr[-3000:]
    assert [m["step"] for m in _metrics(ddp)] == [1, 2, 3, 4, 5]
    assert torch.load(ddp / "checkpoint.pt", weights_only=False)["step"] == 5

    r = _run([sys.executable, "-m", "gan_fast.train", "--resume", "--steps", "6", "--out", str(ddp)])
    assert r.returncode == 2 and "same world size" in r.stderr, r.stderr[-2000:]
