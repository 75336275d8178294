"""cdcgan_ab.py: the run folder, label conditioning, --generate, the course's folder layout, EMNIST.
Exact resume, budgets and settings kept on resume are tested for all seven scripts in
test_runs.py."""

import os

import pytest
import torch

import cdcgan_ab
import checkpoints
import image_io
import synthetic
from conftest import assert_clean_error, run_in_process


@pytest.fixture
def run(shared_runs):
    """The shared 1-epoch run of cdcgan_ab (conftest: 2 x 16 images, --ngf 8, 4 steps)."""
    return {"out": shared_runs.finished("cdcgan_ab")}


def test_run_folder_and_checkpoint(run):
    out = run["out"]
    for name in ("config.json", "real.png", "log.csv", "progress.gif", "losses.png", "last.pt"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert os.listdir(os.path.join(out, "samples")), "no sample grid written"
    # weights_only=True
    checkpoint = checkpoints.load_checkpoint(os.path.join(out, "last.pt"), "cdcgan_ab")
    assert checkpoint["args"]["chars"] == checkpoint["class_names"] == ["A", "B"]
    assert set(checkpoint) >= {"generator", "discriminator", "optimizers", "rng", "history",
                               "fixed_noise", "fixed_labels"}
    assert checkpoint["fixed_labels"].tolist() == [0] * 8 + [1] * 8  # one row of the grid per class


def test_generator_output_depends_on_label(run):
    checkpoint = checkpoints.load_checkpoint(os.path.join(run["out"], "last.pt"), "cdcgan_ab")
    generator = cdcgan_ab.build_generator(checkpoint["args"])
    generator.load_state_dict(checkpoint["generator"])
    noise = torch.randn(4, checkpoint["args"]["nz"], 1, 1,
                        generator=torch.Generator().manual_seed(1))
    images = cdcgan_ab.sample(generator, noise.repeat(2, 1, 1, 1), torch.tensor([0] * 4 + [1] * 4))
    assert images.shape == (8, 1, 32, 32) and images.min() >= -1 and images.max() <= 1
    same_noise_other_label = (images[:4] - images[4:]).abs().flatten(1).mean(1)
    other_noise_same_label = (images[0] - images[1]).abs().mean()
    assert (same_noise_other_label > 1e-3).all(), same_noise_other_label
    assert other_noise_same_label > 1e-3


def test_generate_writes_one_row_per_class(run, tmp_path, capsys):
    from PIL import Image

    grid = str(tmp_path / "generated.png")
    cdcgan_ab.main(["--generate", "3", "--checkpoint", os.path.join(run["out"], "last.pt"),
                    "--grid-out", grid, "--device", "cpu", "--png-dir", str(tmp_path / "pngs"),
                    "--interpolate"])
    assert "3 samples of each of A B" in capsys.readouterr().out
    # The layout of 2 rows (A, B) of 3 with their labels, as image_io.save_grid draws it.
    expected = image_io.save_grid(torch.zeros(6, 1, 32, 32), str(tmp_path / "layout.png"), nrow=3,
                                  row_labels=["A", "B"])
    with Image.open(grid) as picture, Image.open(expected) as layout:
        assert picture.size == layout.size
    assert len(os.listdir(tmp_path / "pngs")) == 6
    for sheet in ("generated_interpolation.png", "generated_class_interpolation.png"):
        assert (tmp_path / sheet).exists(), sheet


def test_class_interpolation_blends_the_label_input(run):
    """--interpolate's class sheet feeds the label branch a blend of one-hots: its ends are the two
    classes."""
    checkpoint = checkpoints.load_checkpoint(os.path.join(run["out"], "last.pt"), "cdcgan_ab")
    generator = cdcgan_ab.build_generator(checkpoint["args"])
    generator.load_state_dict(checkpoint["generator"])
    noise = torch.randn(4, checkpoint["args"]["nz"], 1, 1,
                        generator=torch.Generator().manual_seed(2))
    as_indices = cdcgan_ab.sample(generator, noise, torch.tensor([0, 1, 0, 1]))
    as_weights = cdcgan_ab.sample(generator, noise,
                                  torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    assert torch.allclose(as_indices, as_weights, atol=1e-6)
    halfway = cdcgan_ab.sample(generator, noise, torch.full((4, 2), 0.5))
    assert not torch.allclose(halfway, as_indices, atol=1e-4)


def test_folder_loader_reads_course_files(shared_data):
    data_dir = os.path.join(shared_data, "emnist_ab", "emnist_jpeg")
    if not os.path.isdir(os.path.join(data_dir, "Train", "10")):
        pytest.skip(f"no A/B files in {data_dir}")
    images, labels = cdcgan_ab.load_folder(
        cdcgan_ab.parse_args(["--data", "folder", "--data-dir", data_dir]))
    assert images.dtype == torch.uint8 and images.shape[1:] == (1, 32, 32)
    counts = torch.bincount(labels, minlength=2)
    assert counts.tolist() == [len(os.listdir(os.path.join(data_dir, "Train", n)))
                               for n in ("10", "11")]
    # Transposed by default, the real A's look like upright rendered A's, not like their mirror
    # about the diagonal.
    real_a = images[labels == 0].float().mean(0)[0]
    rendered_a = synthetic.letters(["A"], 100, image_size=32)[0].float().mean(0)[0]

    def correlation(x, y):
        return torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1]

    assert correlation(real_a, rendered_a) > correlation(real_a.T, rendered_a) + 0.05


def test_emnist_loader_keeps_the_chosen_classes_upright(monkeypatch):
    import torchvision

    # torchvision's EMNIST as stored: images transposed, targets = EMNIST-Balanced labels
    class FakeEMNIST:
        def __init__(self, root, split, train, download):
            assert split == "balanced" and train
            self.targets = torch.tensor([10, 3, 11, 10, 11, 11])  # A, 3, B, A, B, B
            self.data = torch.zeros(6, 28, 28, dtype=torch.uint8)
            # a block at the top right, stored; upright it is at the bottom left
            self.data[:, :4, 20:] = 255

    monkeypatch.setattr(torchvision.datasets, "EMNIST", FakeEMNIST)
    images, labels = cdcgan_ab.load_emnist(cdcgan_ab.parse_args(["--data", "emnist"]))
    assert labels.tolist() == [0, 0, 1, 1, 1] and images.shape == (5, 1, 32, 32)
    assert images[:, 0, 24:, :4].float().mean() > 100 and images[:, 0, :4, 24:].float().mean() < 10


def test_emnist_offline_is_one_clear_message(monkeypatch, tmp_path):
    import urllib.error

    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "EMNIST", offline)
    proc = run_in_process("cdcgan_ab", "--data", "emnist", "--data-dir", tmp_path / "data",
                          "--out", tmp_path / "run")
    assert_clean_error(proc, "error:", "EMNIST", "could not be downloaded")
    assert not (tmp_path / "run").exists()


def test_one_character_is_refused(capsys):
    with pytest.raises(SystemExit):
        cdcgan_ab.parse_args(["--chars", "A"])
    assert "two or more" in capsys.readouterr().err


def test_missing_class_folder_is_a_clean_error(tmp_path):
    from PIL import Image

    os.makedirs(tmp_path / "data" / "Train" / "10")  # A is there, B's folder 11 is not
    Image.new("L", (28, 28)).save(tmp_path / "data" / "Train" / "10" / "0.jpeg", format="PNG")
    out = tmp_path / "run"
    proc = run_in_process("cdcgan_ab", "--data", "folder", "--data-dir", tmp_path / "data",
                          "--out", out)
    assert_clean_error(proc, "error:", "11", "does not exist")
    assert not out.exists()
