"""The shipped generators (pretrained/) and the export that makes them (evaluate.py
--export-generator)."""

import os

import pytest
import torch

import evaluate
import image_io
from conftest import REPO, assert_one_error_line, run_in_process, train

# Every file the README shows: each must be there, load safely and draw.
SHIPPED = {"dcgan_cifar32.pt": "dcgan_cifar", "wgan_gp_cifar32.pt": "wgan_gp_cifar",
           "acgan_cifar32.pt": "acgan_cifar"}
MAX_MIB = 8  # "a few MB each"


def test_export_keeps_only_the_averaged_generator_in_half_precision(tmp_path):
    folder = train("dcgan_cifar", tmp_path / "run", "--max-steps", "4")
    source = os.path.join(folder, "last.pt")
    exported = str(tmp_path / "exported.pt")
    with pytest.raises(evaluate.common.UserError, match="other classes"):  # embedded letters
        evaluate.main([source, "--export-generator", exported, "--export-data", "cifar10"])
    trained = torch.load(source, weights_only=True)
    trained["class_names"] = list(image_io.CIFAR10_CLASSES)  # as a run on CIFAR-10 has them
    torch.save(trained, source)
    evaluate.main([source, "--export-generator", exported, "--export-data", "cifar10"])
    export = torch.load(exported, weights_only=True)
    assert not {"discriminator", "optimizers", "rng", "history", "generator_ema"} & set(export)
    assert (export["exported"]["weights"] == "generator_ema"
            and export["exported"]["data"] == "synthetic")
    assert export["args"]["data"] == "cifar10" and export["args"]["data_dir"] == "data"
    assert export["args"]["out"] is None and export["step"] == trained["step"]
    for name, value in trained["generator_ema"].items():
        saved = export["generator"][name]
        assert saved.dtype == (torch.float16 if value.is_floating_point() else value.dtype), name
        assert torch.equal(saved, value.half() if value.is_floating_point() else value), name
    loaded = evaluate.LoadedCheckpoint(exported, torch.device("cpu"))
    assert loaded.weights_label == "generator_ema"
    asked = evaluate.LoadedCheckpoint(exported, torch.device("cpu"), weights="ema")
    assert asked.weights_label == "generator_ema"  # the export's one generator is the average
    with pytest.raises(evaluate.common.UserError, match="--weights raw: .* has no generator "):
        evaluate.main([exported, "--weights", "raw", "--no-fid", "--n-samples", "8"])
    for name, value in loaded.generator.state_dict().items():
        assert torch.equal(value, export["generator"][name].to(value.dtype)), name

    # an export of an export still names the average and the data
    again = str(tmp_path / "again.pt")
    evaluate.main([exported, "--export-generator", again])
    assert (torch.load(again, weights_only=True)["exported"]
            == {**export["exported"], "from": exported})

    refused = run_in_process("dcgan_cifar", "--resume", exported, "--out", tmp_path / "resumed")
    assert_one_error_line(refused, "--resume cannot continue from it")
    assert not (tmp_path / "resumed").exists()
    with pytest.raises(evaluate.common.UserError, match="exists"):
        evaluate.main([source, "--export-generator", exported])


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_shipped_generator_loads_safely_and_draws(name, tmp_path):
    path = os.path.join(REPO, "pretrained", name)
    assert os.path.isfile(path), f"{path} is missing: the README shows it"
    assert os.path.getsize(path) < MAX_MIB * 2**20
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["script"] == SHIPPED[name] and "optimizers" not in checkpoint
    assert ({v.dtype for v in checkpoint["generator"].values() if v.is_floating_point()}
            == {torch.float16})

    grid = tmp_path / "grid.png"
    drawn = run_in_process(SHIPPED[name], "--generate", "16", "--checkpoint", path,
                           "--grid-out", grid, "--device", "cpu")
    assert drawn.returncode == 0 and grid.is_file(), drawn.stderr

    loaded = evaluate.LoadedCheckpoint(path, torch.device("cpu"))
    [(_, images)] = list(evaluate.sample_batches(loaded, 64, 64, seed=0))
    assert images.shape == (64, 3, 32, 32) and torch.isfinite(images).all()
    assert images.min() >= -1 and images.max() <= 1
    # pictures, not flat colours, and not one picture 64 times. A rare near-flat sample is the
    # generator's, not the export's: acgan_cifar32.pt draws one in 1,000 (one of these 64).
    assert (images.flatten(1).std(1) < 0.05).sum() <= 2
    assert images.std(0).mean() > 0.2
