"""Unit tests for the shared helpers: checkpoints, RNG state, the device loader, logging, health monitor."""

import os
import pickle
import random

import numpy as np
import pytest
import torch

import common


def _checkpoint(script="dcgan_letters"):
    return {"format": common.CHECKPOINT_FORMAT, "script": script, "args": {"nz": 4}, "step": 7,
            "generator": {"w": torch.arange(6.0)}, "rng": common.rng_state()}


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    path = str(tmp_path / "last.pt")
    common.save_checkpoint(path, _checkpoint())
    assert not os.path.exists(path + ".tmp")
    loaded = torch.load(path, weights_only=True)  # plain data only: this must not raise
    assert loaded["step"] == 7 and torch.equal(loaded["generator"]["w"], torch.arange(6.0))
    assert common.load_checkpoint(path, "dcgan_letters")["args"] == {"nz": 4}


def test_load_checkpoint_refuses_foreign_corrupt_and_missing(tmp_path):
    path = str(tmp_path / "x.pt")
    common.save_checkpoint(path, _checkpoint("wgan_gp_cifar"))
    with pytest.raises(common.UserError, match="wgan_gp_cifar"):
        common.load_checkpoint(path, "dcgan_letters")
    with open(path, "r+b") as f:  # truncate: a half-written file
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(common.UserError, match="cannot load"):
        common.load_checkpoint(path)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(common.UserError, match="not a gan-scripts checkpoint"):
        common.load_checkpoint(path)
    with pytest.raises(common.UserError, match="not found"):
        common.load_checkpoint(str(tmp_path / "missing.pt"))


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
        common.load_checkpoint(path)
    assert not os.path.exists(MARKER)


def test_rng_state_round_trip():
    state = common.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123), np.random.seed(5), random.seed(9)
    common.set_rng_state(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_device_loader_shards_are_disjoint_and_reproducible():
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    shards = [common.DeviceLoader(images, batch_size=4, seed=3, rank=r, world_size=2, normalize=False) for r in range(2)]
    seen = [torch.cat([(b[:, 0, 0, 0] * 255).round() for b, _ in s.epoch(1)]) for s in shards]
    assert len(set(seen[0].tolist()) & set(seen[1].tolist())) == 0
    assert len(seen[0]) == len(seen[1]) == 20
    again = torch.cat([(b[:, 0, 0, 0] * 255).round() for b, _ in shards[0].epoch(1)])
    assert torch.equal(again, seen[0])  # same epoch, same order: mid-epoch resume relies on it
    other_epoch = torch.cat([(b[:, 0, 0, 0] * 255).round() for b, _ in shards[0].epoch(2)])
    assert not torch.equal(other_epoch, seen[0])
    skipped = torch.cat([(b[:, 0, 0, 0] * 255).round() for b, _ in shards[0].epoch(1, start_batch=2)])
    assert torch.equal(skipped, seen[0][8:])


def test_device_loader_range_and_small_dataset_error():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).repeat(4, 1, 1, 1)
    batch, _ = next(common.DeviceLoader(images, batch_size=8).epoch(0))
    assert batch.min().item() == -1.0 and batch.max().item() == 1.0
    with pytest.raises(common.UserError, match="fewer than one batch"):
        common.DeviceLoader(images, batch_size=9)


def test_loss_meter_means_and_state():
    meter = common.LossMeter()
    meter.add({"loss": torch.tensor(1.0)})
    state = meter.state_dict()
    meter.add({"loss": torch.tensor(3.0)})
    assert meter.means() == {"loss": 2.0}
    restored = common.LossMeter()
    restored.load_state_dict(state, "cpu")
    restored.add({"loss": torch.tensor(5.0)})
    assert restored.means() == {"loss": 3.0}


def test_check_finite_names_the_step():
    assert common.check_finite({"loss_d": 0.5}, 10, skip=False)
    with pytest.raises(common.UserError, match="step 12.*loss_g=nan"):
        common.check_finite({"loss_d": 0.5, "loss_g": float("nan")}, 12, skip=False)


def test_health_monitor_warns_once(capsys):
    monitor = common.HealthMonitor(patience=3)
    for i in range(6):
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


def test_csv_logger_resume_drops_later_rows(tmp_path):
    path = str(tmp_path / "log.csv")
    logger = common.CSVLogger(path, ["step", "loss"])
    for step in (1, 2, 3):
        logger.log({"step": step, "loss": float(step)})
    common.CSVLogger(path, ["step", "loss"], resume_step=2)
    with open(path) as f:
        assert [line.split(",")[0] for line in f.read().split()] == ["step", "1", "2"]


def test_prepare_run_dir_refuses_unwritable_and_existing(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(common.UserError, match="cannot write"):
        common.prepare_run_dir(str(blocker / "run"))
    run = tmp_path / "run"
    common.prepare_run_dir(str(run))
    (run / "last.pt").write_text("x")
    with pytest.raises(common.UserError, match="--resume auto"):
        common.prepare_run_dir(str(run))
