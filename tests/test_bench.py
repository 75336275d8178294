"""bench.py: a smoke run of every script's real training step (no timing assertions: CI machines differ),
the benchmark data against each script's own loader, the baseline's input path, and the --amp/--compile paths."""

import importlib
import os
import re
import shutil

import pytest
import torch

import bench
import common
from conftest import run_script

# One thread: on a loaded 2-core machine two OpenMP threads wait on each other (measured 10x slower).
TINY = ["--steps", "1", "--warmup", "1", "--image-size", "32", "--batch-size", "8", "--device", "cpu", "--threads", "1"]
NUMBER = r"(\d+(?:\.\d+)?)"


def row(output, label):
    """The numbers of the table row `label`: img/step, images/s, ms/step, peak MiB, s/CIFAR ep, x base ('-' kept)."""
    pattern = rf"^{re.escape(label)}\s+{NUMBER}M\s+(\d+)\s+{NUMBER}\s+{NUMBER}\s+(\S+)\s+(\S+)\s+(\S+)\s*$"
    match = re.search(pattern, output, re.M)
    assert match, f"no row for {label!r} in:\n{output}"
    assert float(match.group(1)) > 0  # G+D parameters, in millions
    return match.groups()[1:]


def test_smoke_prints_a_row_per_script_with_the_baseline_ratio_and_the_extraction_row(capsys, monkeypatch):
    calls = []

    def fake_extraction_throughput(device, n_images, batch_size, **kwargs):
        # The real one loads the 90 MB Inception file (8 s here); the test below times it on random weights.
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
        # images/s and ms/step describe the same window: images/s = images per step / seconds per step
        assert float(images_per_s) == pytest.approx(int(images_per_step) * 1000 / float(ms_per_step), rel=0.02)
        assert float(ratio) > 0  # over the baseline windows paired with this row's (so not the baseline row's number)
        assert (cifar_epoch != "-") == script.endswith("_cifar")
    # WGAN-GP: one step reads n_critic (5) batches, and the output says so
    assert row(output, "wgan_gp_cifar")[0] == str(5 * 8)
    assert "1 step = 1 generator + 5 critic updates" in output
    assert calls == [("cpu", 6, 4)]
    assert re.search(r"^evaluate.py feature extraction\s+12.5\s", output, re.M), output


@pytest.fixture
def small_random_inception(monkeypatch):
    """evaluate.py's extractor at 75 px with random weights: the timing plumbing without the 90 MB file."""
    import evaluate

    def no_weights(path=None):
        raise common.UserError("no weights in this test")

    monkeypatch.setattr(evaluate, "find_inception_weights", no_weights)
    monkeypatch.setattr(evaluate, "INCEPTION_SIZE", 75)


def test_extraction_benchmark_times_the_old_and_the_new_path_on_the_same_images(capsys, small_random_inception):
    results = bench.main(["--extraction", "--extraction-images", "6", "--extraction-batch", "3", "--repeats", "1",
                          "--threads", "1", "--device", "cpu"])
    output = capsys.readouterr().out
    before, now = list(results)[:2]
    assert before.startswith("before: batch 100") and now.startswith("now: fused conv+ReLU, batch 3")
    assert all(r["images_per_s"] > 0 for r in results.values()) and results[before]["ratio"] == 1.0
    # fp32: the new path gives the old path's FID (3 vs 3 random-weight features: a tiny FID, float noise of 1e-6;
    # on 50 vs 50 real images bench.py --extraction shows < 1e-6)
    assert results[now]["fid"] == pytest.approx(results[before]["fid"], rel=1e-4)
    assert "x before" in output and "load average" in output


def test_extraction_throughput_reports_images_per_second(small_random_inception):
    rate = bench.extraction_throughput("cpu", n_images=4, batch_size=2)
    assert rate > 0 and rate < float("inf")


@pytest.mark.parametrize("script", bench.SCRIPTS)
def test_benchmark_data_has_the_shape_and_kind_of_the_scripts_own_data(script):
    module = importlib.import_module(script)
    small = {"dcgan_letters": ["--chars", "A", "--n-per-class", "4"], "cdcgan_ab": ["--n-per-class", "4"],
             "cdcgan_anime": ["--n-images", "8"], "cgan_objects": ["--n-images", "8"]}
    args = module.parse_args(["--image-size", "32", "--data", "synthetic", "--n-per-class", "1"]
                             if script.endswith("_cifar") else ["--image-size", "32", *small[script]])
    data = module.load_data(args)
    if isinstance(data, dict):  # dcgan_letters: one uint8 tensor per character, no labels
        images, labels = next(iter(data.values())), None
    else:
        images, labels = data[0], data[1]
    channels = 1 if module.EVAL["dataset"] == "letters" else 3
    fake_images = bench.benchmark_images(len(images), channels, 32, seed=0)
    assert fake_images.dtype == images.dtype and fake_images.shape == images.shape
    fake_labels = bench.benchmark_labels(module, args, len(images), torch.Generator().manual_seed(0))
    if module.EVAL["conditioning"] == "none":  # the unconditional scripts train without labels
        assert fake_labels is None
        return
    assert fake_labels.dtype == labels.dtype and fake_labels.shape == labels.shape
    if labels.dtype.is_floating_point:  # multi-hot: 1 to 3 objects of the 24
        assert set(fake_labels.unique().tolist()) <= {0.0, 1.0}
        assert fake_labels.sum(1).min() >= 1 and fake_labels.sum(1).max() <= 3
    else:  # class indices (N,) or one index per attribute (N, A), each within its number of classes
        counts = module.EVAL["num_classes"] if script != "cdcgan_ab" else len(args.chars)
        counts = torch.tensor(counts if isinstance(counts, list) else [counts])
        assert fake_labels.min() >= 0 and (fake_labels.reshape(len(images), -1).max(0).values < counts).all()


def test_baseline_dataset_gives_the_same_floats_as_the_device_loader():
    """Same data for both loops: ToTensor + Normalize of a PIL image equals DeviceLoader's uint8 -> [-1, 1]."""
    import torchvision.transforms as transforms

    images = bench.benchmark_images(4, 3, 32, seed=0)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    dataset = bench.PILImageDataset(images, transform)
    loader = common.DeviceLoader(images, None, 4, "cpu")
    ours = loader.to_float(images.clone())
    theirs = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert theirs.shape == ours.shape
    assert torch.allclose(theirs, ours, atol=1e-6)


def test_amp_and_cpu_checks_paths_run_on_cpu_and_restore_the_thread_count(capsys):
    bench.main([*TINY, "--scripts", "dcgan_letters", "--amp", "--extraction-images", "0"])
    output = capsys.readouterr().out
    # --amp is bf16 autocast where the CPU has native bf16, and the header says which one this machine got.
    if common.amp_enabled(torch.device("cpu"), True):
        assert "bf16 autocast (--amp)" in output
    else:
        assert "--amp does nothing on this device" in output
    row(output, "dcgan_letters")
    # The CPU checks: one thread, NCHW and --amp, on the smallest script; the thread count is restored after.
    threads = torch.get_num_threads()
    loop, info = bench.prepare_script("dcgan_letters", bench.parse_args(TINY), torch.device("cpu"), threads=1,
                                      nchw=True, amp=True)
    assert loop.window(1) > 0
    info["check"]()
    assert torch.get_num_threads() == threads


def test_scripts_train_in_channels_last_on_the_cpu():
    """common.prepare_model and DeviceLoader give NHWC weights and batches on the CPU (measured faster)."""
    import dcgan_cifar

    args = dcgan_cifar.parse_args(["--device", "cpu", "--batch-size", "4"])
    models, _ = dcgan_cifar.build(args, torch.device("cpu"))
    conv = next(m for m in models["discriminator"].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    loader = common.DeviceLoader(bench.benchmark_images(8, 3, 32, seed=0), None, 4, "cpu")
    images, _ = loader.batch(0)
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()


def test_unknown_script_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--scripts", "stylegan"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("cc") is None,
                    reason="torch.compile on the CPU needs a C++ compiler (g++ or cc) to build its kernels")
@pytest.mark.skipif(os.environ.get("RUN_SLOW_TESTS") != "1",
                    reason="torch.compile on the CPU builds C++ kernels: 30 s of CPU time for dcgan_letters with a "
                           "cold inductor cache (46-75 s wall on the shared 2-core machine): set RUN_SLOW_TESTS=1")
def test_compile_path_runs_on_cpu():
    proc = run_script("bench.py", *TINY, "--scripts", "dcgan_letters", "--compile", "--extraction-images", "0",
                      timeout=600)
    assert "torch.compile" in proc.stdout
    row(proc.stdout, "dcgan_letters")
