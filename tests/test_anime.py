"""cdcgan_anime.py and synthetic.faces: face generator, MLDS tag formats, real loader, wrong tags, losses and
ablations end to end, classifier scoring, the course's face count."""

import os

import numpy as np
import pytest
import torch

import cdcgan_anime
import common
import synthetic
from conftest import assert_clean_error, run_script

# The course's testing_tags.txt: five lines each of five tag pairs.
TESTING_TAGS = "".join(f"{5 * i + j + 1},{pair}\n" for i, pair in enumerate(
    ["blue hair blue eyes", "blue hair green eyes", "blue hair red eyes", "green hair blue eyes", "green hair red eyes"])
    for j in range(5))


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A classifier trained for a few steps: scoring only has to run, not to be right."""
    path = str(tmp_path_factory.mktemp("classifier") / "faces.pt")
    result = cdcgan_anime.train_classifier(path, n_faces=256, n_test=132, epochs=1, verbose=False)
    return path, result


def nearest(rgb, table, names):
    palette = np.array([table[n] for n in names], dtype=float)
    return int(np.argmin(((palette - rgb) ** 2).sum(1)))


def test_faces_deterministic_with_requested_colours():
    a = synthetic.faces(12, 32, seed=5)
    b = synthetic.faces(12, 32, seed=5)
    c = synthetic.faces(12, 32, seed=6)
    assert a[0].dtype == torch.uint8 and a[0].shape == (12, 3, 32, 32)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])

    hair = [i % 12 for i in range(132)]
    eyes = [i % 11 for i in range(132)]
    images, hair_out, eyes_out, masks = synthetic.faces(132, 64, seed=1, hair=hair, eyes=eyes, return_masks=True)
    assert hair_out.tolist() == hair and eyes_out.tolist() == eyes
    hair_right = eye_right = 0
    for i in range(132):
        pixels = images[i].permute(1, 2, 0).float()
        assert masks["hair"][i].sum() > 100 and masks["iris"][i].sum() > 10
        hair_right += nearest(pixels[masks["hair"][i]].mean(0).numpy(), synthetic.HAIR_RGB, synthetic.HAIR_COLOURS) == hair[i]
        eye_right += nearest(pixels[masks["iris"][i]].mean(0).numpy(), synthetic.EYE_RGB, synthetic.EYE_COLOURS) == eyes[i]
    assert hair_right >= 0.9 * 132 and eye_right >= 0.9 * 132, (hair_right, eye_right)
    with pytest.raises(ValueError, match="silver"):
        synthetic.faces(2, 32, hair="silver")


def test_writer_and_real_loader_both_formats(tmp_path):
    images, hair, eyes = synthetic.faces(40, 32, seed=3)
    synthetic.write_faces(str(tmp_path / "extra"), n=40, image_size=32, seed=3)
    loaded, labels = cdcgan_anime.load_anime(str(tmp_path / "extra"), 32, verbose=False)
    assert labels[:, 0].tolist() == hair.tolist() and labels[:, 1].tolist() == eyes.tolist()
    assert (loaded.float() - images.float()).abs().mean() < 6  # the same faces, through JPEG
    line = open(tmp_path / "extra" / "tags.csv").readline().strip()
    assert line == f"0,{synthetic.HAIR_COLOURS[hair[0]]} hair {synthetic.EYE_COLOURS[eyes[0]]} eyes"

    synthetic.write_faces(str(tmp_path / "old"), n=60, seed=4, layout="faces")
    old_images, old_labels = cdcgan_anime.load_anime(str(tmp_path / "old"), 32, verbose=False)
    _, hair, eyes = synthetic.faces(60, 96, seed=4)
    rows, dropped = cdcgan_anime.parse_tags_clean(str(tmp_path / "old" / "tags_clean.csv"))
    assert dropped > 0 and len(rows) + dropped == 60 and len(old_images) == len(rows)
    for (image_id, h, e), label in zip(rows, old_labels.tolist()):
        assert (h, e) == (hair[int(image_id)].item(), eyes[int(image_id)].item()) == tuple(label)


def test_tag_parsers_and_bad_lines(tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text("0,aqua hair aqua eyes\n1,blonde hair red eyes\n")
    assert cdcgan_anime.parse_tags_csv(str(path)) == [("0", 0 + 2, 5), ("1", 11, 9)]
    path.write_text("0,aqua hair aqua eyes\n1,blonde hair red eyes\n2,blonde hair\n")
    with pytest.raises(common.UserError, match="line 3"):
        cdcgan_anime.parse_tags_csv(str(path))
    path.write_text("0,aqua hair aqua eyes\n17\n")
    with pytest.raises(common.UserError, match="line 2"):
        cdcgan_anime.parse_tags_csv(str(path))
    path.write_text("0,silver hair aqua eyes\n")
    with pytest.raises(common.UserError, match="silver"):
        cdcgan_anime.parse_tags_csv(str(path))
    clean = tmp_path / "tags_clean.csv"
    clean.write_text("0,long hair:10\tblue hair:3\tred eyes:2\n1,blue hair:3\tpink hair:1\tred eyes:2\n"
                     "2,smile:4\tgreen eyes:9\n3,silver hair:2\tgreen hair:5\tblue eyes:1\n")
    rows, dropped = cdcgan_anime.parse_tags_clean(str(clean))
    assert rows == [("0", 8, 9), ("3", 4, 10)] and dropped == 2


def test_wrong_tags_never_equal_the_right_ones():
    pairs = torch.tensor([(h, e) for h in range(12) for e in range(11)]).repeat(30, 1)
    wrong = cdcgan_anime.wrong_tags(pairs)
    assert not (wrong == pairs).all(1).any()
    assert wrong[:, 0].max() == 11 and wrong[:, 1].max() == 10 and wrong.min() == 0
    assert len({tuple(w) for w in wrong.tolist()}) > 100  # spread over the other pairs, not one shifted copy


def test_bce_ablations_end_to_end_and_scoring(tmp_path, tiny_classifier):
    classifier_path, ceiling = tiny_classifier
    assert set(ceiling) >= {"hair_acc", "eye_acc", "both_acc"}
    (tmp_path / "testing_tags.txt").write_text(TESTING_TAGS)
    out = tmp_path / "run"
    run_script("cdcgan_anime.py", "--image-size", "32", "--n-faces", "128", "--batch-size", "32", "--epochs", "1",
               "--soft-labels", "--no-normalize", "--act", "selu", "--ngf", "16", "--ndf", "16",
               "--tags-file", tmp_path / "testing_tags.txt", "--show", "pink hair aqua eyes", "black hair gray eyes",
               "--classifier", classifier_path, "--out", out, "--no-progress")
    for name in ("config.json", "log.csv", "last.pt", "losses.png", "progress.gif", "accuracy.png",
                 "samples/epoch_001.png", "samples/cgan.png"):
        assert (out / name).exists(), name
    log = (out / "log.csv").read_text().splitlines()
    assert "both_acc" in log[0] and any(row.split(",")[-2] for row in log[1:])  # an accuracy row was logged
    checkpoint = common.load_checkpoint(str(out / "last.pt"), "cdcgan_anime")
    generator = cdcgan_anime.build_generator(checkpoint["args"])
    generator.load_state_dict(checkpoint["generator"])
    scores = cdcgan_anime.score_generator(generator, checkpoint["args"], classifier_path, "cpu", n_per_pair=2)
    assert scores["n"] == 264 and 0 <= scores["both_acc"] <= min(scores["hair_acc"], scores["eye_acc"]) <= 1
    images = cdcgan_anime.sample(generator, torch.randn(4, 100), torch.tensor([[0, 0], [1, 1], [2, 2], [3, 3]]))
    assert images.min() >= -1 and images.max() <= 1  # --no-normalize samples mapped back to [-1, 1]


def test_wgan_losses_and_ablations_end_to_end(tmp_path):
    # In-process (main(argv)) to spare the interpreter start-up; the bce test runs the command line itself.
    synthetic.write_faces(str(tmp_path / "extra_data"), n=48, image_size=32, seed=2)
    cdcgan_anime.main(["--loss", "wgan-gp", "--lambda", "1", "--data", "anime", "--data-dir", str(tmp_path),
                       "--image-size", "32", "--batch-size", "16", "--max-steps", "2", "--n-critic", "2", "--ngf", "16",
                       "--ndf", "16", "--out", str(tmp_path / "gp"), "--no-progress"])
    cdcgan_anime.main(["--loss", "wgan-clip", "--no-bn", "--unconditional", "--image-size", "32", "--n-faces", "64",
                       "--batch-size", "16", "--max-steps", "2", "--ngf", "16", "--ndf", "16",
                       "--out", str(tmp_path / "clip"), "--no-progress"])
    for run in ("gp", "clip"):
        checkpoint = common.load_checkpoint(str(tmp_path / run / "last.pt"), "cdcgan_anime")
        assert checkpoint["step"] == 2
    clip_checkpoint = common.load_checkpoint(str(tmp_path / "clip" / "last.pt"))
    critic_weights = torch.cat([v.flatten() for v in clip_checkpoint["discriminator"].values()])
    assert critic_weights.abs().max() <= 0.02 + 1e-6  # weight clipping happened
    assert not any("embedding" in k for k in clip_checkpoint["generator"])  # unconditional: no tags


def test_gradient_penalty_is_zero_for_unit_slope_critic():
    weight = torch.zeros(3, 4, 4)
    weight[0, 0, 0] = 1.0  # D(x) = x[0, 0, 0]: gradient norm exactly 1 everywhere
    critic = lambda images, labels: (images * weight).flatten(1).sum(1)  # noqa: E731
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    assert cdcgan_anime.gradient_penalty(critic, real, fake, None).item() == pytest.approx(0.0, abs=1e-6)
    steep = lambda images, labels: 3 * (images * weight).flatten(1).sum(1)  # noqa: E731
    assert cdcgan_anime.gradient_penalty(steep, real, fake, None).item() == pytest.approx(4.0, abs=1e-5)


def test_bad_input_messages(tmp_path, capsys):
    proc = run_script("cdcgan_anime.py", "--show", "silver hair blue eyes", check=False)
    assert_clean_error(proc, "silver", "hair")
    folder = tmp_path / "extra_data"
    synthetic.write_faces(str(folder), n=4, image_size=32, seed=0)
    (folder / "tags.csv").write_text("0,blue hair red eyes\n1,blue hair\n")
    with pytest.raises(common.UserError, match="tags.csv line 2"):
        cdcgan_anime.main(["--data", "anime", "--data-dir", str(folder), "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()  # validated before anything was written
    (folder / "tags.csv").write_text("0,blue hair red eyes\n9,blue hair red eyes\n")
    with pytest.raises(common.UserError, match="9"):
        cdcgan_anime.load_anime(str(folder), 32, verbose=False)
    (folder / "tags.csv").write_text("0,blue hair red eyes\n1,pink hair red eyes\n")
    images, labels = cdcgan_anime.load_anime(str(folder), 32)
    assert len(images) == 2 and labels.tolist() == [[8, 9], [7, 9]]
    assert "2 images" in capsys.readouterr().err  # the two untagged images are reported, not used
    with pytest.raises(common.UserError, match="no anime faces"):
        cdcgan_anime.load_anime(str(tmp_path / "elsewhere"), 32)


def test_face_count_on_sheets(shared_data, tmp_path):
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is optional")
    if not hasattr(cv2, "CascadeClassifier"):
        pytest.skip(f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved it out): needs opencv<5")
    cascade = os.path.join(shared_data, "lbpcascade_animeface.xml")
    if not os.path.isfile(cascade):
        pytest.skip("lbpcascade_animeface.xml not in ../shared/data")
    assert cdcgan_anime.face_count(torch.zeros(25, 3, 64, 64), cascade) == 0
    images, _, _ = synthetic.faces(25, 32, seed=1)
    sheet = common.save_grid(images.float() / 127.5 - 1, str(tmp_path / "cgan.png"), nrow=5)
    assert cdcgan_anime.face_count(sheet, cascade) >= 15  # the cartoon faces look like faces to the cascade too
    with pytest.raises(common.UserError, match="cascade"):
        cdcgan_anime.face_count(sheet, str(tmp_path / "missing.xml"))
