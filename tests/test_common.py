"""Unit tests for the shared helpers: checkpoints (checkpoints.py), RNG state, the device loader
(image_io.py), logging, the health monitor, the run folder's lock (common.py)."""

import copy
import csv
import importlib
import os
import pickle
import random

import numpy as np
import pytest
import torch

import checkpoints
import common
import image_io
from conftest import SCRIPTS


def _checkpoint(script="dcgan_letters"):
    return {"format": checkpoints.CHECKPOINT_FORMAT, "script": script, "args": {"nz": 4}, "step": 7,
            "generator": {"w": torch.arange(6.0)}, "rng": checkpoints.rng_state()}


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    path = str(tmp_path / "last.pt")
    checkpoints.save_checkpoint(path, _checkpoint())
    assert not os.path.exists(path + ".tmp")
    loaded = torch.load(path, weights_only=True)  # plain data only: this must not raise
    assert loaded["step"] == 7 and torch.equal(loaded["generator"]["w"], torch.arange(6.0))
    assert checkpoints.load_checkpoint(path, "dcgan_letters")["args"] == {"nz": 4}


def test_load_checkpoint_refuses_foreign_corrupt_and_missing(tmp_path):
    path = str(tmp_path / "x.pt")
    checkpoints.save_checkpoint(path, _checkpoint("wgan_gp_cifar"))
    with pytest.raises(common.UserError, match="wgan_gp_cifar"):
        checkpoints.load_checkpoint(path, "dcgan_letters")
    with open(path, "r+b") as f:  # truncate: a half-written file
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(common.UserError, match="cannot load"):
        checkpoints.load_checkpoint(path)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(common.UserError, match="not a gan-scripts checkpoint"):
        checkpoints.load_checkpoint(path)
    with pytest.raises(common.UserError, match="not found"):
        checkpoints.load_checkpoint(str(tmp_path / "missing.pt"))


class _Payload:
    def __reduce__(self):
        return (open, (MARKER, "w"))


MARKER = ""


def test_malicious_checkpoint_is_refused_without_running(tmp_path):
    global MARKER
    MARKER = str(tmp_path / "payload_ran")
    path = str(tmp_path / "evil.pt")
    with open(path, "wb") as f:
        pickle.dump({"format": 1, "script": "dcgan_letters", "x": _Payload()}, f)
    with pytest.raises(common.UserError, match="could run code"):
        checkpoints.load_checkpoint(path)
    assert not os.path.exists(MARKER)


def test_rng_state_round_trip():
    state = checkpoints.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123), np.random.seed(5), random.seed(9)
    checkpoints.set_rng_state(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def _epoch(loader, epoch, start_batch=0):
    """The pixel values (the image ids) of one epoch's batches, from loader.batch(step)."""
    steps = range(epoch * len(loader) + start_batch, (epoch + 1) * len(loader))
    return torch.cat([(loader.batch(step)[0][:, 0, 0, 0] * 255).round() for step in steps])


def test_device_loader_shards_are_disjoint_and_reproducible():
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    shards = [image_io.DeviceLoader(images, batch_size=4, seed=3, rank=r, world_size=2,
                                    normalize=False)
              for r in range(2)]
    seen = [_epoch(s, 1) for s in shards]
    assert len(set(seen[0].tolist()) & set(seen[1].tolist())) == 0
    assert len(seen[0]) == len(seen[1]) == 20
    # same epoch, same order: resume at any step relies on it
    assert torch.equal(_epoch(shards[0], 1), seen[0])
    assert not torch.equal(_epoch(shards[0], 2), seen[0])
    assert torch.equal(_epoch(shards[0], 1, start_batch=2), seen[0][8:])
    fresh = image_io.DeviceLoader(images, batch_size=4, seed=3, rank=0, world_size=2,
                                  normalize=False)
    # a new process (a resume) sees the same
    assert torch.equal(_epoch(fresh, 1, start_batch=2), seen[0][8:])


def test_device_loader_range_and_small_dataset_error():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).repeat(4, 1, 1, 1)
    batch, _ = image_io.DeviceLoader(images, batch_size=8).batch(0)
    assert batch.min().item() == -1.0 and batch.max().item() == 1.0
    with pytest.raises(common.UserError, match="fewer than one batch"):
        image_io.DeviceLoader(images, batch_size=9)


class _Args:
    log_every, skip_nonfinite, batch_size, track, no_progress = 2, False, 4, False, True


def test_train_log_takes_any_keys_and_resumes_its_meter(tmp_path):
    dist = common.Dist()
    log = common.TrainLog(str(tmp_path), _Args(), dist, total_steps=10)
    log.add({"loss_hinge": torch.tensor(1.0)}, step=1, epoch=1)
    # a checkpoint between two log steps keeps the half-filled meter
    state = copy.deepcopy(log.state_dict())
    log.add({"loss_hinge": torch.tensor(3.0)}, step=2, epoch=1)
    resumed = common.TrainLog(str(tmp_path), _Args(), dist, total_steps=10, step=1, state=state)
    resumed.add({"loss_hinge": torch.tensor(3.0)}, step=2, epoch=1)
    resumed.add({"loss_hinge": torch.tensor(5.0), "accuracy": torch.tensor(0.5)}, step=3, epoch=1)
    # a new column
    resumed.add({"loss_hinge": torch.tensor(7.0), "accuracy": torch.tensor(0.7)}, step=4, epoch=1)
    resumed.record(4, 1, fid=12.5)
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert ([(r["step"], r["loss_hinge"], r["accuracy"]) for r in rows[:2]]
            == [("2", "2", ""), ("4", "6", "0.6")])
    assert rows[2]["fid"] == "12.5" and resumed.history["scores"]["fid"] == [12.5]
    assert resumed.history["loss_hinge"] == [2.0, 6.0]
    assert {"step", "epoch", "images_per_s", "minutes"} <= set(rows[0])


def test_train_log_resume_drops_later_rows_and_survives_a_torn_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"step,epoch,loss\n1,1,0.5\n2,1,0.4\n3,1,0.33,4,1,0.2\n5,1,0.1\n\0\0\0\0")
    log = common.TrainLog(str(tmp_path), _Args(), common.Dist(), total_steps=10, step=4,
                          state={"history": {"step": []}, "meter": {"sums": {}, "count": 0}})
    log.close()
    with open(path) as f:
        # the merged row and the rows past step 4 go
        assert [r["step"] for r in csv.DictReader(f)] == ["1", "2"]


def test_check_finite_names_the_step():
    assert common.check_finite({"loss_d": 0.5}, 10, skip=False)
    with pytest.raises(common.UserError, match="step 12.*loss_g=nan"):
        common.check_finite({"loss_d": 0.5, "loss_g": float("nan")}, 12, skip=False)


def test_health_monitor_warns_once(capsys):
    monitor = common.HealthMonitor()
    for i in range(4):  # 4 log intervals of a losing generator: not yet
        monitor.update({"d_fake": 0.001, "loss_g": 5.0 + i}, step=i)
    assert "discriminator is winning" not in capsys.readouterr().err
    for i in range(4, 10):  # the 5th in a row and more: one warning
        monitor.update({"d_fake": 0.001, "loss_g": 5.0 + i}, step=i)
    assert capsys.readouterr().err.count("discriminator is winning") == 1
    real = torch.rand(16, 1, 8, 8) * 2 - 1
    collapsed = real[:1].repeat(16, 1, 1, 1) + 0.001 * torch.randn(16, 1, 8, 8)
    monitor.check_samples(real, real, epoch=1, step=1000)
    assert "mode collapse" not in capsys.readouterr().err
    monitor.check_samples(collapsed, real, epoch=1, step=10)
    assert "mode collapse" not in capsys.readouterr().err  # too early to tell
    monitor.check_samples(collapsed, real, epoch=2, step=1000)
    assert "mode collapse" in capsys.readouterr().err


def test_claim_run_folder_refuses_unwritable_existing_and_a_second_run(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(common.UserError, match="cannot write"):
        common.claim_run_folder(str(blocker / "run"))
    run = tmp_path / "run"
    lock = common.claim_run_folder(str(run))
    with pytest.raises(common.UserError, match="another run is using"):
        common.claim_run_folder(str(run), resume=True)
    # the run ended (or was killed: the kernel drops its flock): the folder is free again
    lock.close()
    common.claim_run_folder(str(run), resume=True).close()
    (run / "last.pt").write_text("x")
    with pytest.raises(common.UserError, match="--resume auto"):
        common.claim_run_folder(str(run))


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_s_ema_follows_the_generator_with_warm_up(script):
    """Every script's own update_ema: the decay warmed up as (1 + step) / (10 + step), BN statistics
    copied."""
    update_ema = importlib.import_module(script).update_ema
    generator = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = copy.deepcopy(generator)
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(1.0)
        generator[1].running_mean.fill_(3.0)
    update_ema(ema, generator, decay=0.999, step=0)  # warm-up decay min(0.999, 1/10) = 0.1
    assert torch.allclose(ema[0].bias, generator[0].bias - 0.1)
    assert torch.equal(ema[1].running_mean, generator[1].running_mean)
    before = ema[0].bias.clone()
    update_ema(ema, generator, decay=0.999, step=10**6)  # late: decay 0.999
    assert torch.allclose(ema[0].bias, before + 0.001 * (generator[0].bias - before))
