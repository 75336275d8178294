"""bench.py: a smoke run of every script's real training step (no timing assertions: CI machines
differ), the benchmark data against each script's own loader, the baseline's input path, the
--precision/--compile paths, FID's matrix step (eigh against sqrtm), the CIFAR-10 batches writer
and the whole-process mode."""

import importlib
import os
import pickle
import re
import shutil
import textwrap

import numpy as np
import pytest
import torch

import bench
import common
import image_io
from conftest import run_script

# One thread: on a loaded 2-core machine two OpenMP threads wait on each other (10x slower).
TINY = ["--steps", "1", "--warmup", "1", "--image-size", "32", "--batch-size", "8",
        "--device", "cpu", "--threads", "1"]
NUMBER = r"(\d+(?:\.\d+)?)"


def row(output, label):
    """The numbers of the table row `label`: img/step, images/s, ms/step, peak MiB, s/CIFAR ep,
    x base ('-' kept)."""
    pattern = (rf"^{re.escape(label)}\s+{NUMBER}M\s+(\d+)\s+{NUMBER}\s+{NUMBER}\s+(\S+)\s+(\S+)"
               rf"\s+(\S+)\s*$")
    match = re.search(pattern, output, re.M)
    assert match, f"no row for {label!r} in:\n{output}"
    assert float(match.group(1)) > 0  # G+D parameters, in millions
    return match.groups()[1:]


def test_smoke_prints_a_row_per_script_with_the_baseline_ratio_and_the_extraction_row(
        capsys, monkeypatch):
    calls = []

    def fake_extraction_throughput(device, n_images, batch_size, **kwargs):
        # The real one loads the 90 MB Inception file (8 s here); a test below times random weights.
        calls.append((str(device), n_images, batch_size))
        return 12.5

    monkeypatch.setattr(bench, "extraction_throughput", fake_extraction_throughput)
    bench.main([*TINY, "--baseline", "--extraction-images", "6", "--extraction-batch", "4"])
    output = capsys.readouterr().out
    baseline = row(output, "baseline: DCGAN, DataLoader+PIL")
    assert float(baseline[1]) > 0 and baseline[5] == "1.00"
    for script in bench.SCRIPTS:
        images_per_step, images_per_s, ms_per_step, _, cifar_epoch, ratio = row(output, script)
        assert float(images_per_s) > 0 and float(ms_per_step) > 0
        # images/s and ms/step describe the same window: images per step / seconds per step
        per_step = int(images_per_step) * 1000 / float(ms_per_step)
        assert float(images_per_s) == pytest.approx(per_step, rel=0.02)
        assert float(ratio) > 0  # over the baseline windows paired with this row's
        assert (cifar_epoch != "-") == script.endswith("_cifar")
    # WGAN-GP: one step reads n_critic (5) batches, and the output says so
    assert row(output, "wgan_gp_cifar")[0] == str(5 * 8)
    assert "1 step = 1 generator + 5 critic updates" in output
    assert calls == [("cpu", 6, 4)]
    assert re.search(r"^evaluate.py feature extraction\s+12.5\s", output, re.M), output


@pytest.fixture
def small_random_inception(monkeypatch):
    """fid.py's extractor at 75 px with random weights: the timing plumbing without the 90 MB
    file."""
    import fid

    def no_weights(path=None):
        raise common.UserError("no weights in this test")

    monkeypatch.setattr(fid, "find_inception_weights", no_weights)
    monkeypatch.setattr(fid, "INCEPTION_SIZE", 75)


def test_extraction_benchmark_times_the_old_and_the_new_path_on_the_same_images(
        capsys, small_random_inception):
    results = bench.main(["--extraction", "--extraction-images", "6", "--extraction-batch", "3",
                          "--repeats", "1", "--threads", "1", "--device", "cpu"])
    output = capsys.readouterr().out
    before, now = list(results)[:2]
    assert before.startswith("before: batch 100")
    assert now.startswith("now: fused conv+ReLU, batch 3")
    assert all(r["images_per_s"] > 0 for r in results.values())
    assert results[before]["ratio"] == 1.0
    # fp32: the new path gives the old path's FID (3 vs 3 random-weight features: a tiny FID, float
    # noise of 1e-6; on 50 vs 50 real images bench.py --extraction shows < 1e-6)
    assert results[now]["fid"] == pytest.approx(results[before]["fid"], rel=1e-4)
    assert "x before" in output and "load average" in output


def test_extraction_throughput_reports_images_per_second(small_random_inception):
    rate = bench.extraction_throughput("cpu", n_images=4, batch_size=2)
    assert rate > 0 and rate < float("inf")


@pytest.mark.parametrize("script", bench.SCRIPTS)
def test_benchmark_data_has_the_shape_and_kind_of_the_scripts_own_data(script):
    module = importlib.import_module(script)
    small = {"dcgan_letters": ["--chars", "A", "--n-per-class", "4"],
             "cdcgan_ab": ["--n-per-class", "4"],
             "cdcgan_anime": ["--n-images", "8"], "cgan_objects": ["--n-images", "8"]}
    cifar = ["--data", "synthetic", "--n-per-class", "1"]
    args = module.parse_args(["--image-size", "32",
                              *(cifar if script.endswith("_cifar") else small[script])])
    data = module.load_data(args)
    if isinstance(data, dict):  # dcgan_letters: one uint8 tensor per character, no labels
        images, labels = next(iter(data.values())), None
    else:
        images, labels = data[0], data[1]
    channels = 1 if module.EVAL["dataset"] == "letters" else 3
    fake_images = bench.benchmark_images(len(images), channels, 32, seed=0)
    assert fake_images.dtype == images.dtype and fake_images.shape == images.shape
    generator = torch.Generator().manual_seed(0)
    fake_labels = bench.benchmark_labels(module, args, len(images), generator)
    if module.EVAL["conditioning"] == "none":  # the unconditional scripts train without labels
        assert fake_labels is None
        return
    assert fake_labels.dtype == labels.dtype and fake_labels.shape == labels.shape
    if labels.dtype.is_floating_point:  # multi-hot: 1 to 3 objects of the 24
        assert set(fake_labels.unique().tolist()) <= {0.0, 1.0}
        assert fake_labels.sum(1).min() >= 1 and fake_labels.sum(1).max() <= 3
    else:  # class indices (N,) or one index per attribute (N, A), each within its class count
        counts = module.EVAL["num_classes"] if script != "cdcgan_ab" else len(args.chars)
        counts = torch.tensor(counts if isinstance(counts, list) else [counts])
        assert fake_labels.min() >= 0
        assert (fake_labels.reshape(len(images), -1).max(0).values < counts).all()


def test_baseline_dataset_gives_the_same_floats_as_the_device_loader():
    """Same data for both loops: ToTensor + Normalize of a PIL image equals DeviceLoader's uint8
    -> [-1, 1]."""
    import torchvision.transforms as transforms

    images = bench.benchmark_images(4, 3, 32, seed=0)
    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    dataset = bench.PILImageDataset(images, transform)
    loader = image_io.DeviceLoader(images, None, 4, "cpu")
    ours = loader.to_float(images.clone())
    theirs = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert theirs.shape == ours.shape
    assert torch.allclose(theirs, ours, atol=1e-6)


def test_precision_and_cpu_checks_paths_run_on_cpu_and_restore_the_thread_count(capsys):
    letters = [*TINY, "--scripts", "dcgan_letters", "--extraction-images", "0"]
    bench.main([*letters, "--precision", "fp32"])
    assert "batch 8, fp32, eager" in capsys.readouterr().out
    bench.main(letters)
    output = capsys.readouterr().out
    # auto: bf16 where the CPU has native bf16 (as the scripts resolve it), as the header says
    if common.native_bf16(torch.device("cpu")):
        assert "bf16 autocast (--precision auto: native bf16 here)" in output
    else:
        assert "fp32 (--precision auto: no native bf16 here)" in output
    row(output, "dcgan_letters")
    # The CPU checks: one thread, NCHW, bf16, on the smallest script; the thread count is restored.
    threads = torch.get_num_threads()
    loop, info = bench.prepare_script("dcgan_letters", bench.parse_args(TINY), torch.device("cpu"),
                                      threads=1, nchw=True, precision="bf16")
    assert loop.window(1) > 0
    info["check"]()
    assert torch.get_num_threads() == threads


def test_scripts_train_in_channels_last_on_the_cpu():
    """common.prepare_model and DeviceLoader give NHWC weights and batches on the CPU (measured
    faster)."""
    import dcgan_cifar

    args = dcgan_cifar.parse_args(["--device", "cpu", "--batch-size", "4"])
    models, _ = dcgan_cifar.build(args, torch.device("cpu"))
    conv = next(m for m in models["discriminator"].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    loader = image_io.DeviceLoader(bench.benchmark_images(8, 3, 32, seed=0), None, 4, "cpu")
    images, _ = loader.batch(0)
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()


def test_unknown_script_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--scripts", "stylegan"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.skipif(not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("cc")),
                    reason="torch.compile on the CPU needs a C++ compiler (g++ or cc)")
@pytest.mark.skipif(os.environ.get("RUN_SLOW_TESTS") != "1",
                    reason="torch.compile on the CPU builds C++ kernels: 30 s of CPU time for "
                           "dcgan_letters with a cold inductor cache (46-75 s wall on the shared "
                           "2-core machine): set RUN_SLOW_TESTS=1")
def test_compile_path_runs_on_cpu():
    proc = run_script("bench.py", *TINY, "--scripts", "dcgan_letters", "--compile",
                      "--extraction-images", "0", timeout=600)
    assert "torch.compile" in proc.stdout
    row(proc.stdout, "dcgan_letters")


def test_frechet_compares_eigh_with_sqrtm_on_files_and_random_statistics(tmp_path, capsys):
    """Small dimensions: the plumbing and the agreement, not the speed (2048 x 2048 is the real
    run)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 32)) @ rng.normal(size=(32, 32))
    mu, sigma = a.mean(0), np.cov(a, rowvar=False)
    # as evaluate.py's cache writes them (mu, sigma, n, some features), and bare features
    np.savez(tmp_path / "a.npz", mu=mu, sigma=sigma, n=np.array(300),
             features=a[:50].astype(np.float32))
    np.save(tmp_path / "b.npy", rng.normal(size=(200, 32)) @ rng.normal(size=(32, 32)) + 0.5)
    results = bench.main(["--frechet", "--frechet-dims", "32", "--frechet-features",
                          str(tmp_path / "a.npz"), str(tmp_path / "b.npy")])
    output = capsys.readouterr().out
    real, full, deficient = results
    assert real == "real: a.npz vs b.npy" and "rank-deficient" in deficient
    assert re.search(r"^real: a.npz vs b.npy\s+300\s+200\s+32\s", output, re.M), output
    for label in (real, full):
        assert results[label]["rel_diff"] < 1e-6 and results[label]["ours_s"] > 0
    assert np.isfinite(results[deficient]["ours"]) and "x faster" in output


def write_jpeg_tree(root, per_class):
    """root/{train,test}/<CIFAR-10 class>/NNNN.jpg, 32x32 pictures; returns {split: the decoded
    pictures, uint8 (N, 32, 32, 3)}."""
    from PIL import Image

    pixels = {}
    for split, count in per_class.items():
        arrays = []
        for c, name in enumerate(image_io.CIFAR10_CLASSES):
            os.makedirs(root / split / name)
            for i in range(count):
                array = np.full((32, 32, 3), 20 * c + 5 * i, np.uint8)
                array[:, :16, 0] = 250 - 10 * c  # the planes must come out in R, G, B order
                path = root / split / name / f"{i:04d}.jpg"
                Image.fromarray(array).save(path, quality=95)
                arrays.append(np.asarray(Image.open(path).convert("RGB")))
        pixels[split] = np.stack(arrays)
    return pixels


def test_make_cifar_batches_writes_the_official_layout_that_both_readers_take(
        tmp_path, monkeypatch):
    pixels = write_jpeg_tree(tmp_path / "jpeg", {"train": 3, "test": 1})
    folder = bench.main(["--make-cifar-batches", str(tmp_path / "jpeg"), str(tmp_path / "py")])
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    assert sorted(os.listdir(folder)) == ["batches.meta", *batches, "test_batch"]
    with open(os.path.join(folder, "data_batch_1"), "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert entry["data"].dtype == np.uint8 and entry["data"].shape[1] == 3072
    assert len(entry["labels"]) == len(entry["filenames"]) == len(entry["data"])
    # ours: every training picture once, with its class
    images, labels = image_io.load_cifar10(str(tmp_path / "py"))
    assert images.shape == (30, 3, 32, 32)
    assert sorted(labels.tolist()) == sorted(list(range(10)) * 3)
    ours = [bytes(p) for p in images.permute(0, 2, 3, 1).numpy()]
    assert set(ours) == {bytes(p) for p in pixels["train"]}
    for c, picture in enumerate(pixels["train"][::3]):  # the first picture of each class
        assert labels[ours.index(bytes(picture))] == c
    # torchvision's (as pytorch/examples reads it), with its MD5 checks off as bench.PEER_WRAPPER
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    test = torchvision.datasets.cifar.CIFAR10(str(tmp_path / "py"), train=False)
    assert len(test) == 10 and test.classes == list(image_io.CIFAR10_CLASSES)
    assert {bytes(p) for p in test.data} == {bytes(p) for p in pixels["test"]}


FAKE_PEER = textwrap.dedent("""
    # pytorch/examples' dcgan/main.py cut to what the wrapper touches: CIFAR10 with download=True
    # (offline: only the wrapper keeps it from downloading), a DataLoader loop over --niter epochs
    import argparse, sys, torch.utils.data, torchvision.datasets as dset
    import torchvision.transforms as transforms
    parser = argparse.ArgumentParser()
    for flag in ("--dataset", "--dataroot", "--imageSize", "--batchSize", "--niter",
                 "--manualSeed", "--outf"):
        parser.add_argument(flag)
    opt = parser.parse_args()
    dataset = dset.CIFAR10(root=opt.dataroot, download=True, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(opt.batchSize), shuffle=True)
    steps = sum(1 for _ in range(int(opt.niter)) for _ in loader)
    sys.exit(0 if steps == len(loader) == 2 else 3)  # the wrapper stopped it after 2 batches
""")


def test_whole_process_runs_ours_and_the_peer_and_reports_time_and_memory(tmp_path, capsys):
    write_jpeg_tree(tmp_path / "jpeg", {"train": 2, "test": 1})
    bench.main(["--make-cifar-batches", str(tmp_path / "jpeg"), str(tmp_path / "py")])
    (tmp_path / "main.py").write_text(FAKE_PEER)
    results = bench.main(["--whole-process", "--peer", str(tmp_path / "main.py"),
                          "--data-dir", str(tmp_path / "py"), "--process-steps", "2",
                          "--rounds", "1", "--batch-size", "8",
                          "--threads", "1"])
    output = capsys.readouterr().out
    [measured] = results["rounds"]
    assert measured["ours_s"] > 0 and measured["peer_s"] > 0 and measured["peer_mib"] > 0
    assert re.search(r"^\s+1\s+ours\s", output, re.M), output  # round 2 starts with the peer
    numbers = r"\s+[\d.]+" * 3 + r"\s+\d+\s+\d+\s+[\d.]+$"
    assert re.search(r"^\s+median" + numbers, output, re.M), output
    assert "--max-steps 2 --image-size 64 --batch-size 8" in output
    assert "--batchSize 8 --niter 1" in output
    assert results["precision"] == common.pick_precision("auto", torch.device("cpu"))


def test_whole_process_refuses_a_missing_peer_or_data(tmp_path):
    with pytest.raises(SystemExit):
        bench.parse_args(["--whole-process"])  # --peer is required
    with pytest.raises(SystemExit):  # pytorch/examples' DCGAN is 64 px only
        bench.parse_args(["--whole-process", "--peer", "main.py", "--image-size", "32"])
    (tmp_path / "main.py").write_text("")
    with pytest.raises(common.UserError, match="no CIFAR-10 python batches"):
        bench.main(["--whole-process", "--peer", str(tmp_path / "main.py"),
                    "--data-dir", str(tmp_path)])
