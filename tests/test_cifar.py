"""CIFAR-10 trio (dcgan_cifar, acgan_cifar, wgan_gp_cifar): data loading, models, losses, end-to-end runs.

The real CIFAR-10 cannot be downloaded in CI, so a tiny fake one is written in the official format
(cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta: Python-2-style pickles of numpy arrays)
and read through the same code path as the real files. No test touches the network: the offline
message is provoked with a proxy on a closed local port.
"""

import csv
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import assert_clean_error, run_script

import acgan_cifar
import dcgan_cifar
import wgan_gp_cifar

SCRIPTS = {"dcgan_cifar": dcgan_cifar, "acgan_cifar": acgan_cifar, "wgan_gp_cifar": wgan_gp_cifar}
PER_BATCH = 8  # images per fake batch file: 5 x 8 = 40 training images
# These models are tiny: one thread is fastest, and on a busy machine a second OpenMP thread spin-waits.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pickle_like_cifar(obj):
    """Pickle as the official files are: protocol 2, numpy arrays under numpy.core.multiarray
    (what the Python 2 pickles name; numpy 2 writes numpy._core)."""
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def write_fake_cifar10(root, per_batch=PER_BATCH, seed=0):
    """A tiny CIFAR-10 in the official python layout; class c's images are mostly colour c, so they differ."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for b, name in enumerate(names):
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        base = np.array([[(c * 25) % 256, (c * 80) % 256, (255 - c * 25) % 256] for c in labels], dtype=np.int64)
        pixels = base[:, :, None] + rng.integers(-30, 30, (per_batch, 3, 1024))
        data = pixels.clip(0, 255).astype(np.uint8).reshape(per_batch, 3072)  # R plane, G plane, B plane
        batch_label = "testing batch 1 of 1" if name == "test_batch" else f"training batch {b + 1} of 5"
        entry = {"batch_label": batch_label, "labels": labels, "data": data,
                 "filenames": [f"fake_{b}_{i}.png" for i in range(per_batch)]}
        with open(os.path.join(folder, name), "wb") as f:
            f.write(pickle_like_cifar(entry))
    meta = {"num_cases_per_batch": per_batch, "label_names": list(dcgan_cifar.CIFAR10_CLASSES), "num_vis": 3072}
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        f.write(pickle_like_cifar(meta))
    return root


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    return write_fake_cifar10(str(tmp_path_factory.mktemp("cifar")))


TINY = ["--batch-size", "8", "--ngf", "8", "--ndf", "8", "--no-progress", "--log-every", "1"]


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------
def test_fake_cifar_is_read_through_the_real_loader(fake_cifar):
    images, labels = dcgan_cifar.load_cifar10(fake_cifar)
    assert images.dtype == torch.uint8 and images.shape == (5 * PER_BATCH, 3, 32, 32)
    with open(os.path.join(fake_cifar, "cifar-10-batches-py", "data_batch_2"), "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    first = torch.from_numpy(entry["data"][0])
    # Row-major 3072 bytes = the red plane, then green, then blue, each 32 x 32.
    assert torch.equal(images[PER_BATCH], first.view(3, 32, 32))
    assert labels[PER_BATCH:2 * PER_BATCH].tolist() == entry["labels"]
    # 64 px: the same pictures, resized once to the training size.
    args = acgan_cifar.parse_args(["--data-dir", fake_cifar, "--image-size", "64"])
    big, big_labels, names = acgan_cifar.load_data(args)
    assert big.shape == (5 * PER_BATCH, 3, 64, 64) and torch.equal(big_labels, labels)
    assert names[0] == "airplane" and len(names) == 10


def test_corrupt_or_tampered_batch_fails_with_one_clear_message(fake_cifar, tmp_path):
    root = write_fake_cifar10(str(tmp_path))
    batch = os.path.join(root, "cifar-10-batches-py", "data_batch_3")
    with open(batch, "r+b") as f:
        f.truncate(200)
    with pytest.raises(dcgan_cifar.common.UserError, match="data_batch_3 is not a readable CIFAR-10 batch"):
        dcgan_cifar.load_cifar10(root)

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with open(batch, "wb") as f:
        pickle.dump({"data": RunsCode(), "labels": [0]}, f, protocol=2)
    with pytest.raises(dcgan_cifar.common.UserError, match="unexpected object"):
        wgan_gp_cifar.load_cifar10(root)
    assert not (tmp_path / "pwned").exists()


def test_missing_cifar_offline_gives_one_clear_line(tmp_path):
    """The real command path: torchvision tries to download and cannot (a proxy on a closed local port
    stands in for 'offline', so the test never reaches the network); nothing is written to --out."""
    out = tmp_path / "run"
    closed = "http://127.0.0.1:9"
    proc = run_script("dcgan_cifar.py", "--data-dir", tmp_path / "data", "--out", out, check=False,
                      env={"http_proxy": closed, "https_proxy": closed, "HTTPS_PROXY": closed, "HTTP_PROXY": closed,
                           "no_proxy": "", "NO_PROXY": "", **ONE_THREAD})
    assert_clean_error(proc, "cifar-10-python.tar.gz", "cs.toronto.edu/~kriz/cifar.html",
                       str(tmp_path / "data" / "cifar-10-batches-py"))
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()


def test_image_folder_and_synthetic_data(tmp_path):
    from PIL import Image

    for c, colour in (("cats", (200, 30, 30)), ("dogs", (30, 30, 200))):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (48 + 8 * i, 40), colour).save(tmp_path / c / f"{i}.png")
    images, labels, names = dcgan_cifar.load_image_folder(str(tmp_path), 32)
    assert images.shape == (6, 3, 32, 32) and names == ["cats", "dogs"] and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert images[0, 0].float().mean() > 150 and images[5, 2].float().mean() > 150  # red cats, blue dogs
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(dcgan_cifar.common.UserError, match="broken.jpg"):
        dcgan_cifar.load_image_folder(str(tmp_path), 32)
    with pytest.raises(dcgan_cifar.common.UserError, match="not found"):
        dcgan_cifar.load_image_folder(str(tmp_path / "nowhere"), 32)

    images, labels, names = acgan_cifar.load_synthetic(6, 32, seed=1)
    assert images.shape == (60, 3, 32, 32) and images.dtype == torch.uint8 and len(names) == 10
    assert torch.bincount(labels).tolist() == [6] * 10
    # Each class has its own colour: the brightest pixels of class 0 and class 1 differ in hue.
    ink = [images[labels == c].float().flatten(2).max(2).values.mean(0) for c in (0, 1)]
    assert (ink[0] - ink[1]).abs().max() > 60


@pytest.mark.parametrize("script", list(SCRIPTS))
@pytest.mark.parametrize("argv, needle", [
    (["--data", "imagenet"], "invalid choice"),
    (["--image-size", "48"], "--image-size must be 32 or 64"),
])
def test_bad_arguments_fail_in_argparse(script, argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        SCRIPTS[script].parse_args(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["--lambda", "-1"], "--lambda: invalid non-negative number value: '-1'"),
    (["--n-critic", "0"], "--n-critic: invalid positive integer value: '0'"),
])
def test_bad_wgan_arguments_fail_in_argparse(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        wgan_gp_cifar.parse_args(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Models and losses
# ---------------------------------------------------------------------------
def count_layers(module, kinds):
    return sum(isinstance(m, kinds) for m in module.modules())


@pytest.mark.parametrize("size, blocks", [(32, 4), (64, 5)])
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_shapes_and_block_counts_for_both_image_sizes(script, size, blocks):
    module = SCRIPTS[script]
    args = module.parse_args(["--image-size", str(size), "--ngf", "8", "--ndf", "8"])
    models, _ = module.build(args, torch.device("cpu"))
    generator = models["generator"]
    critic = models["critic" if script == "wgan_gp_cifar" else "discriminator"]
    assert count_layers(generator, nn.ConvTranspose2d) == blocks  # 4x4 projection + doublings
    assert count_layers(critic, nn.Conv2d) == blocks + (1 if script == "acgan_cifar" else 0)  # + class head
    noise, labels = torch.randn(3, args.nz, 1, 1), torch.tensor([0, 4, 9])
    images = module.sample(generator, noise, labels)
    assert images.shape == (3, 3, size, size) and images.min() >= -1 and images.max() <= 1
    output = critic(images)
    if script == "acgan_cifar":
        assert output[0].shape == (3,) and output[1].shape == (3, 10)
    else:
        assert output.shape == (3,)
    # The generator rebuilt from a checkpoint's plain args dict loads the trained weights.
    rebuilt = module.build_generator(dcgan_cifar.common.plain_args(args))
    rebuilt.load_state_dict(generator.state_dict())


@pytest.mark.parametrize("norm", ["layer", "none"])
def test_critic_has_no_batch_norm_and_scores_each_sample_alone(norm):
    args = wgan_gp_cifar.parse_args(["--image-size", "32", "--ndf", "8", "--critic-norm", norm])
    critic = wgan_gp_cifar.build(args, torch.device("cpu"))[0]["critic"]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in critic.modules())
    assert not any(isinstance(m, nn.Sigmoid) for m in critic.modules())
    batch = torch.randn(4, 3, 32, 32)
    other = torch.cat([batch[:1], torch.randn(3, 3, 32, 32)])  # same first image, different batch mates
    assert torch.allclose(critic(batch)[0], critic(other)[0], atol=1e-5)


def test_gradient_penalty_equals_the_analytic_value_for_a_linear_critic():
    """C(x) = w . x has gradient w everywhere: penalty (||w|| - 1)^2, d penalty / dw = 2 (||w|| - 1) w / ||w||."""
    torch.manual_seed(0)
    for target_norm in (3.0, 0.5):
        critic = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1))
        with torch.no_grad():
            critic[1].weight.mul_(target_norm / critic[1].weight.norm())
        w = critic[1].weight.detach().clone()
        real, fake = torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
        penalty, grad_norm = wgan_gp_cifar.gradient_penalty(critic, real, fake)
        assert penalty.item() == pytest.approx((target_norm - 1) ** 2, rel=1e-4)
        assert grad_norm.item() == pytest.approx(target_norm, rel=1e-4)
        penalty.backward()  # create_graph=True: the penalty trains the critic
        expected = 2 * (target_norm - 1) * w / target_norm
        assert torch.allclose(critic[1].weight.grad, expected, atol=1e-5)


def test_lambda_reaches_the_critic_loss():
    """With one critic update per step, loss_d(lambda) = E[C(fake)] - E[C(real)] + lambda * penalty."""
    assert wgan_gp_cifar.parse_args(["--lambda", "10"]).lambda_gp == 10.0
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    results = {}
    for lam in ("0", "10", "20"):
        args = wgan_gp_cifar.parse_args(["--image-size", "32", "--ngf", "8", "--ndf", "8", "--batch-size", "8",
                                         "--n-critic", "1", "--lambda", lam])
        torch.manual_seed(0)
        models, optimizers = wgan_gp_cifar.build(args, torch.device("cpu"))
        torch.manual_seed(1)
        results[float(lam)] = wgan_gp_cifar.train_step(models, optimizers, {"images": real, "labels": None}, args)
    penalty = results[0.0]["gradient_penalty"]
    assert penalty > 0
    for lam in (10.0, 20.0):
        assert torch.allclose(results[lam]["gradient_penalty"], penalty)
        assert torch.allclose(results[lam]["loss_d"] - results[0.0]["loss_d"], lam * penalty, rtol=1e-4)
    assert torch.allclose(results[0.0]["loss_d"], -results[0.0]["wasserstein"])


def test_wgan_step_makes_n_critic_critic_updates_and_one_generator_update():
    args = wgan_gp_cifar.parse_args(["--image-size", "32", "--ngf", "8", "--ndf", "8", "--batch-size", "4",
                                     "--n-critic", "3"])
    models, optimizers = wgan_gp_cifar.build(args, torch.device("cpu"))
    batch = torch.rand(wgan_gp_cifar.images_per_step(args), 3, 32, 32) * 2 - 1
    wgan_gp_cifar.train_step(models, optimizers, {"images": batch, "labels": None}, args)
    assert optimizers["critic"].state_dict()["state"][0]["step"].item() == 3
    assert optimizers["generator"].state_dict()["state"][0]["step"].item() == 1


def test_acgan_class_loss_falls_on_a_separable_batch():
    """Real images of class c are flat colour c: the auxiliary classifier must learn them within a few steps."""
    torch.manual_seed(0)
    args = acgan_cifar.parse_args(["--image-size", "32", "--ngf", "8", "--ndf", "8", "--batch-size", "20",
                                   "--lr", "1e-3"])
    models, optimizers = acgan_cifar.build(args, torch.device("cpu"))
    labels = torch.arange(10).repeat(2)
    palette = torch.rand(10, 3, 1, 1) * 2 - 1
    images = (palette[labels] + 0.05 * torch.randn(20, 3, 32, 32)).clamp(-1, 1)

    def class_loss_now():
        with torch.no_grad():
            return acgan_cifar.class_loss(models["discriminator"](images)[1], labels).item()

    before = class_loss_now()
    for _ in range(15):
        losses = acgan_cifar.train_step(models, optimizers, {"images": images, "labels": labels}, args)
    assert class_loss_now() < 0.5 * before
    assert losses["acc_real"].item() == 1.0


def test_ema_follows_the_generator_with_warm_up():
    generator = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = dcgan_cifar.copy.deepcopy(generator)
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(1.0)
        generator[1].running_mean.fill_(3.0)
    dcgan_cifar.update_ema(ema, generator, decay=0.999, step=0)  # warm-up decay min(0.999, 1/10) = 0.1
    assert torch.allclose(ema[0].bias, generator[0].bias - 0.1)
    assert torch.equal(ema[1].running_mean, generator[1].running_mean)
    before = ema[0].bias.clone()
    dcgan_cifar.update_ema(ema, generator, decay=0.999, step=10**6)  # late: decay 0.999
    assert torch.allclose(ema[0].bias, before + 0.001 * (generator[0].bias - before))


# ---------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_end_to_end_on_fake_cifar(script, size, fake_cifar, tmp_path):
    out = tmp_path / "run"
    extra = ["--n-critic", "2"] if script == "wgan_gp_cifar" else []
    run_script(f"{script}.py", "--data-dir", fake_cifar, "--image-size", size, "--epochs", "2", "--sample-every", "1",
               "--save-every", "1", "--out", out, *TINY, *extra, env=ONE_THREAD)
    for name in ("config.json", "log.csv", "losses.png", "progress.gif", "last.pt", "epoch_001.pt", "epoch_002.pt",
                 "samples/epoch_001.png", "samples/epoch_002.png"):
        assert (out / name).exists(), name
    module = SCRIPTS[script]
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    steps_per_epoch = 5 * PER_BATCH // (8 * (2 if script == "wgan_gp_cifar" else 1))
    assert checkpoint["script"] == script and checkpoint["finished"] and checkpoint["step"] == 2 * steps_per_epoch
    assert ("critic" if script == "wgan_gp_cifar" else "discriminator") in checkpoint
    generator = module.build_generator(checkpoint["args"])
    generator.load_state_dict(checkpoint["generator_ema"])
    images = module.sample(generator, torch.randn(10, checkpoint["args"]["nz"], 1, 1), torch.arange(10))
    assert images.shape == (10, 3, size, size)
    with open(out / "log.csv") as f:
        header = f.readline().strip().split(",")
    wanted = {"acgan_cifar": ["acc_real", "acc_fake"], "wgan_gp_cifar": ["wasserstein", "grad_norm"]}
    assert set(wanted.get(script, ["d_real"])) <= set(header)
    if script == "acgan_cifar":
        assert (out / "accuracy.png").exists()


def test_resume_continues_exactly(fake_cifar, tmp_path):
    """K + M steps in one go == K steps, stop, --resume auto for M more (deterministic CPU), EMA included."""
    argv = ["--data-dir", fake_cifar, "--image-size", "32", "--deterministic", "--epochs", "2", *TINY]
    acgan_cifar.main([*argv, "--out", str(tmp_path / "straight"), "--max-steps", "7"])
    acgan_cifar.main([*argv, "--out", str(tmp_path / "split"), "--max-steps", "3"])
    acgan_cifar.main([*argv, "--out", str(tmp_path / "split"), "--max-steps", "7", "--resume", "auto"])
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    split = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert split["step"] == straight["step"] == 7
    for part in ("generator", "generator_ema", "discriminator"):
        for key, value in straight[part].items():
            assert torch.equal(value, split[part][key]), (part, key)
    assert split["history"]["epoch_acc_real"] == straight["history"]["epoch_acc_real"]


def test_fid_every_logs_fid_and_keeps_best(fake_cifar, tmp_path, monkeypatch):
    """--fid-every with evaluate.py's library function stubbed (the real one needs the Inception weights):
    FID lands in log.csv and best.pt is the epoch with the lowest FID. Missing weights: one clear error."""
    import evaluate

    with pytest.raises(dcgan_cifar.common.UserError, match="no such file"):
        dcgan_cifar.main(["--data-dir", fake_cifar, "--fid-every", "1", "--inception-weights", str(tmp_path / "none.pt"),
                          "--out", str(tmp_path / "refused"), *TINY])
    assert not (tmp_path / "refused").exists()

    fids = iter([30.0, 10.0, 20.0])
    calls = []

    def fake_generator_fid(sample_fn, ref, n_samples, device, batch_size=100, inception_weights=None, **kwargs):
        images = sample_fn(4)
        calls.append((images.shape, ref.dtype, n_samples))
        return {"fid": next(fids), "kid": 0.01, "kid_std": 0.0}

    monkeypatch.setattr(evaluate, "load_inception", lambda *a, **k: None)
    monkeypatch.setattr(evaluate, "generator_fid", fake_generator_fid)
    out = tmp_path / "run"
    dcgan_cifar.main(["--data-dir", fake_cifar, "--image-size", "32", "--epochs", "3", "--fid-every", "1",
                      "--fid-samples", "16", "--sample-every", "5", "--out", str(out), *TINY])
    assert calls == [((4, 3, 32, 32), torch.uint8, 16)] * 3
    with open(out / "log.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["fid"]]
    assert [float(r["fid"]) for r in rows] == [30.0, 10.0, 20.0] and [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 2
