"""dcgan_letters.py end to end on tiny data: the run folder of each character and learning rate,
--generate, the course's folder layout, EMNIST offline, bad files. Exact resume, budgets, bad
arguments and --generate's output checks are tested for all seven scripts in test_runs.py and
test_reliability.py."""

import csv
import os
import urllib.error

import pytest
import torch

import checkpoints
import common
import dcgan_letters

TINY = ["--n-per-class", "96", "--batch-size", "32", "--log-every", "1", "--no-progress"]


def read_log(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_end_to_end_run_writes_the_run_folder(shared_runs, tmp_path):
    """The shared 2-epoch run of --chars A (conftest): its folder A/ holds every file of a run."""
    folder = shared_runs.reference("dcgan_letters")
    assert os.path.basename(os.path.normpath(folder)) == "A"
    for name in ("config.json", "real.png", "last.pt", "epoch_001.pt", "epoch_002.pt", "log.csv",
                 "losses.png", "progress.gif", "samples/epoch_001.png", "samples/epoch_002.png"):
        assert os.path.isfile(os.path.join(folder, name)), name
    rows = read_log(os.path.join(folder, "log.csv"))
    # --log-every 3 and each epoch's end (4 steps)
    assert [int(r["step"]) for r in rows] == [3, 4, 6, 8]
    checkpoint = torch.load(os.path.join(folder, "last.pt"), weights_only=True)
    assert (checkpoint["script"] == "dcgan_letters" and checkpoint["char"] == "A"
            and checkpoint["finished"])
    generator = dcgan_letters.build_generator(checkpoint["args"])
    generator.load_state_dict(checkpoint["generator"])
    images = dcgan_letters.sample(generator, torch.randn(4, checkpoint["args"]["nz"], 1, 1))
    assert images.shape == (4, 1, 32, 32) and images.min() >= -1 and images.max() <= 1
    # --generate: samples from the checkpoint, no training data needed; one PNG each and a latent
    # walk on request.
    grid = tmp_path / "grid.png"
    dcgan_letters.main(["--generate", "16", "--checkpoint", os.path.join(folder, "last.pt"),
                        "--grid-out", str(grid), "--png-dir", str(tmp_path / "pngs"),
                        "--interpolate"])
    assert grid.exists() and (tmp_path / "grid_interpolation.png").exists()
    assert len(os.listdir(tmp_path / "pngs")) == 16


def test_learning_rate_comparison_plot(tmp_path):
    dcgan_letters.main(["--chars", "C", "--lr", "1e-4", "1e-3", "--max-steps", "2",
                        "--out", str(tmp_path), *TINY])
    assert (tmp_path / "C" / "lr_comparison.png").exists()
    for rate in (1e-4, 1e-3):  # one run each, with its own rate in its checkpoint
        checkpoint = checkpoints.load_checkpoint(str(tmp_path / "C" / f"lr_{rate:g}" / "last.pt"),
                                                 "dcgan_letters")
        assert checkpoint["args"]["lr"] == rate and checkpoint["args"]["chars"] == ["C"]


def test_folder_layout_reads_the_course_files(tmp_path, shared_data):
    root = os.path.join(shared_data, "emnist_ab", "emnist_jpeg")
    if not os.path.isdir(root):
        pytest.skip("course A/B files absent")
    args = dcgan_letters.parse_args(["--data", "folder", "--data-dir", root,
                                     "--folders", "10", "11"])
    data = dcgan_letters.load_folder(args)
    assert set(data) == {"folder_10", "folder_11"}
    a = data["folder_10"]
    assert a.dtype == torch.uint8 and a.shape[1:] == (1, 32, 32) and len(a) == 2400
    # Transposed back upright: an 'A' has its apex at the top, so the top rows hold less ink
    # than the bottom.
    mean = a.float().mean(0)[0]
    assert mean[6:12].sum() < mean[18:24].sum()
    by_char = dcgan_letters.load_folder(
        dcgan_letters.parse_args(["--data", "folder", "--data-dir", root, "--chars", "B"]))
    assert torch.equal(by_char["B"], data["folder_11"])


def test_emnist_offline_gives_one_clear_message(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "EMNIST", offline)
    args = dcgan_letters.parse_args(["--data", "emnist", "--data-dir", str(tmp_path),
                                     "--chars", "A"])
    with pytest.raises(common.UserError, match="could not be downloaded"):
        dcgan_letters.load_emnist(args)
    with pytest.raises(common.UserError, match="merges"):
        dcgan_letters.load_emnist(dcgan_letters.parse_args(["--data", "emnist", "--chars", "u"]))


def test_bad_files_fail_cleanly(tmp_path):
    from PIL import Image

    (tmp_path / "Train" / "10").mkdir(parents=True)
    (tmp_path / "Train" / "11").mkdir(parents=True)
    # B's folder has images (28x28 PNG data named .jpeg, as the course's), A's has none
    for i in range(8):
        Image.new("L", (28, 28)).save(tmp_path / "Train" / "11" / f"{i}.jpeg", format="PNG")
    args = ["--data", "folder", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), *TINY,
            "--batch-size", "8"]
    # A is checked before B trains: nothing is written
    with pytest.raises(common.UserError, match="no .jpeg"):
        dcgan_letters.main([*args, "--chars", "B", "A"])
    assert not (tmp_path / "run").exists()
    with pytest.raises(common.UserError, match="does not exist"):
        dcgan_letters.main([*args, "--folders", "3"])
    foreign = tmp_path / "foreign.pt"
    checkpoints.save_checkpoint(str(foreign), {"format": 1, "script": "wgan_gp_cifar", "args": {}})
    with pytest.raises(common.UserError, match="wgan_gp_cifar"):
        dcgan_letters.main(["--chars", "A", "--resume", str(foreign),
                            "--out", str(tmp_path / "r2"), *TINY])
