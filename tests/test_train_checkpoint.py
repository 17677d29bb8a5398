"""Checkpoints: atomic writes, and a resume that continues bit-for-bit."""
import json
import os

import pytest
import torch

from gan_fast.train import checkpoint as C
from gan_fast.train.loop import Trainer, TrainConfig


def tiny(out, **kw) -> TrainConfig:
    base = dict(data="synthetic", synthetic_n=40, image_size=32, nz=8, ngf=4, ndf=4,
                batch_size=8, steps=7, out=str(out), log_every=1, sample_every=0,
                checkpoint_every=0, eval=False, progress=False, loss_impl="stock", seed=3,
                threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _assert_same_state(a: dict, b: dict):
    for part in ("generator", "discriminator"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    for part in ("opt_g", "opt_d"):
        sa, sb = a[part]["state"], b[part]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for k in sa[i]:
                assert torch.equal(sa[i][k], sb[i][k]), f"{part}[{i}].{k} differs"
    assert a["data_order"] == b["data_order"]
    assert torch.equal(a["rng"]["noise"], b["rng"]["noise"])
    assert a["step"] == b["step"]


@pytest.mark.parametrize("loss", ["bce", "wgan"])
def test_resume_is_bit_for_bit(tmp_path, loss):
    """N steps in one go == k steps, stop, resume, N - k steps (5 images per epoch: the
    resume also crosses epoch boundaries)."""
    kw = dict(loss=loss, clip_d=0.05 if loss == "wgan" else None,
              sample_every=2 if loss == "bce" else 0)  # sampling must not touch the state
    straight = Trainer(tiny(tmp_path / "a", **kw))
    straight.run()
    first = Trainer(tiny(tmp_path / "b", steps=3, **kw))
    first.run()
    resumed = Trainer(tiny(tmp_path / "b", steps=7, resume=True, **kw))
    assert resumed.step == 3
    resumed.run()
    _assert_same_state(straight.state(), resumed.state())
    _assert_same_state(C.load(tmp_path / "a"), C.load(tmp_path / "b" / "checkpoint.pt"))
    # the metrics log of the resumed run is the straight run's, step for step
    la = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == list(range(1, 8))
    assert [(r["loss_d"], r["loss_g"]) for r in la] == [(r["loss_d"], r["loss_g"]) for r in lb]


def test_resume_from_a_periodic_checkpoint_drops_later_log_lines(tmp_path):
    t = Trainer(tiny(tmp_path, steps=6, checkpoint_every=4))
    t.run()
    # simulate a crash after step 6's log line but with the last checkpoint at step 4
    ck = C.load(tmp_path)
    ck_path = tmp_path / "checkpoint.pt"
    t2 = Trainer(tiny(tmp_path / "x", steps=4))
    t2.run()
    os.replace(tmp_path / "x" / "checkpoint.pt", ck_path)
    r = Trainer(tiny(tmp_path, steps=6, resume=True))
    assert r.step == 4
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    r.run()
    _assert_same_state(ck, r.state())


def test_resume_refuses_other_settings(tmp_path):
    Trainer(tiny(tmp_path, steps=2)).run()
    with pytest.raises(ValueError, match="ngf: checkpoint 4, now 8"):
        Trainer(tiny(tmp_path, steps=4, ngf=8, resume=True))
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(tiny(tmp_path, steps=4))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(tiny(tmp_path / "empty", steps=4, resume=True))
    t = Trainer(tiny(tmp_path, steps=2, overwrite=True))
    assert t.step == 0


def test_checkpoint_contents_load_with_weights_only(tmp_path):
    Trainer(tiny(tmp_path, steps=2)).run()
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["format"] == "gan_fast.train" and ck["step"] == 2
    assert {"torch", "numpy", "python", "noise"} <= set(ck["rng"])
    assert ck["data_order"]["position"] == 2 and ck["fixed_noise"].shape == (64, 8, 1, 1)
    assert ck["config"]["ngf"] == 4
    # the stock state_dict keys (fused models share them)
    assert any(k.startswith("main.1.running_mean") for k in ck["generator"])


def test_rng_state_round_trip():
    import random

    import numpy as np
    g = torch.Generator().manual_seed(0)
    st = C.rng_state(g)
    a = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=g))
    C.set_rng_state(st, g)
    b = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=g))
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]
    assert torch.equal(a[3], b[3])


def test_atomic_save_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "ck.pt"
    C.atomic_save({"a": torch.ones(2)}, p)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        C.atomic_save({"a": Boom()}, p)
    assert torch.equal(torch.load(p, weights_only=True)["a"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"]  # no temp file left behind


def test_load_rejects_other_files(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"hello": 1}, p)
    with pytest.raises(ValueError, match="not a gan_fast.train checkpoint"):
        C.load(p)
    p.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable"):
        C.load(p)
