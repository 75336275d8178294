"""cdcgan_anime.py and synthetic.faces: face generator, MLDS tag formats, real loader, wrong tags,
losses and ablations end to end, generate and its sheets, and the faces judge (judges.py;
classifier scores, the course's face count, evaluate.py's rows)."""

import argparse
import csv
import os

import numpy as np
import pytest
import torch

import cdcgan_anime
import checkpoints
import common
import evaluate
import image_io
import judges
import synthetic
from conftest import assert_clean_error, run_in_process

# The course's testing_tags.txt: five lines each of five tag pairs.
TESTING_TAGS = "".join(f"{5 * i + j + 1},{pair}\n" for i, pair in enumerate(
    ["blue hair blue eyes", "blue hair green eyes", "blue hair red eyes", "green hair blue eyes",
     "green hair red eyes"])
    for j in range(5))


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A classifier trained for a few steps: scoring only has to run, not to be right."""
    path = str(tmp_path_factory.mktemp("classifier") / "faces.pt")
    result = judges.faces_train_classifier(path, n_faces=256, n_test=132, epochs=1, verbose=False)
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
    images, hair_out, eyes_out, masks = synthetic.faces(132, 64, seed=1, hair=hair, eyes=eyes,
                                                        return_masks=True)
    assert hair_out.tolist() == hair and eyes_out.tolist() == eyes
    hair_right = eye_right = 0
    for i in range(132):
        pixels = images[i].permute(1, 2, 0).float()
        assert masks["hair"][i].sum() > 100 and masks["iris"][i].sum() > 10
        hair_right += nearest(pixels[masks["hair"][i]].mean(0).numpy(), synthetic.HAIR_RGB,
                              synthetic.HAIR_COLOURS) == hair[i]
        eye_right += nearest(pixels[masks["iris"][i]].mean(0).numpy(), synthetic.EYE_RGB,
                             synthetic.EYE_COLOURS) == eyes[i]
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


class ColourCodeJudge(torch.nn.Module):
    """Reads the tags a stub generator wrote into the pixels; gets the eyes wrong on every
    green-haired face."""

    def __init__(self):
        super().__init__()
        self.hair_head, self.eye_head = torch.nn.Linear(1, 12), torch.nn.Linear(1, 11)

    def forward(self, images):
        hair, eyes = images[:, 0, 0, 0].round().long(), images[:, 1, 0, 0].round().long()
        eyes = torch.where(hair == cdcgan_anime.HAIR_COLOURS.index("green"), (eyes + 1) % 11, eyes)
        return (torch.nn.functional.one_hot(hair, 12).float(),
                torch.nn.functional.one_hot(eyes, 11).float())


def test_faces_score_per_pair_and_the_judge_tables_of_real_tags(tmp_path, monkeypatch):
    def stub_generator(noise, labels):  # paints its tags: a perfect conditional generator
        return labels.float().view(-1, 2, 1, 1).expand(-1, 2, 4, 4)

    scores, per_pair = judges.faces_score(stub_generator, (3,), ColourCodeJudge(), "cpu",
                                          n_per_pair=2, per_pair=True)
    green = cdcgan_anime.HAIR_COLOURS.index("green")
    expected = torch.tensor([0.0 if hair == green else 1.0
                             for hair in range(12) for _ in range(11)])
    assert torch.equal(per_pair.float(), expected) and scores["both_acc"] == pytest.approx(11 / 12)
    assert scores["hair_acc"] == 1.0

    # a judge trained on real-format faces keeps per-pair tables: faces per pair, held-out right
    # per pair
    synthetic.write_faces(str(tmp_path / "mlds"), n=300, image_size=32, seed=3)
    path = str(tmp_path / "faces.pt")
    real = evaluate.judge_training_data("faces", str(tmp_path / "mlds"), seed=0, verbose=False)
    result = judges.faces_train_classifier(path, real, epochs=1, verbose=False)
    judge = torch.load(path, weights_only=True)
    _, hair, eyes = synthetic.faces(300, 32, seed=3)
    assert judge["pair_counts"] == torch.bincount(hair * 11 + eyes, minlength=132).tolist()
    assert sum(judge["held_out_pair_counts"]) == result["n"] == 30
    assert sum(judge["held_out_pair_right"]) == round(result["both_acc"] * 30)

    # a checkpoint's row: the course's five pairs and the pairs with enough real faces, each beside
    # its ceiling
    monkeypatch.setattr(judges, "faces_load_classifier",
                        lambda file, device: (ColourCodeJudge(), judge))
    monkeypatch.setattr(judges, "FACES_COMMON_PAIR", 4)
    loaded = type("Loaded", (), {"sample": staticmethod(stub_generator), "noise_shape": (3,),
                                 "module": cdcgan_anime, "args": {}})()
    row = judges.faces_checkpoint_scores(loaded, path, "cpu")
    # two of the five pairs have green hair
    assert row["both_acc_report_pairs"] == pytest.approx(3 / 5)
    common_pairs = [i for i, n in enumerate(judge["pair_counts"]) if n >= 4]
    assert row["both_acc_pairs_4"] == pytest.approx(expected[common_pairs].mean().item())
    report = [h * 11 + e for h, e in map(cdcgan_anime.parse_tag_text, cdcgan_anime.REPORT_PAIRS)]
    held = sum(judge["held_out_pair_counts"][i] for i in report)
    assert row.get("ceiling_both_report_pairs") == (
        sum(judge["held_out_pair_right"][i] for i in report) / held if held else None)
    assert row["ceiling_both"] == result["both_acc"]
    # "n" is the FID's sample count in a table row
    assert row["faces_judged"] == 32 * 132 and "n" not in row


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
    clean.write_text("0,long hair:10\tblue hair:3\tred eyes:2\n"
                     "1,blue hair:3\tpink hair:1\tred eyes:2\n"
                     "2,smile:4\tgreen eyes:9\n"
                     "3,silver hair:2\tgreen hair:5\tblue eyes:1\n")
    rows, dropped = cdcgan_anime.parse_tags_clean(str(clean))
    assert rows == [("0", 8, 9), ("3", 4, 10)] and dropped == 2


def test_wrong_tags_never_equal_the_right_ones():
    pairs = torch.tensor([(h, e) for h in range(12) for e in range(11)]).repeat(30, 1)
    wrong = cdcgan_anime.wrong_tags(pairs)
    assert not (wrong == pairs).all(1).any()
    assert wrong[:, 0].max() == 11 and wrong[:, 1].max() == 10 and wrong.min() == 0
    # spread over the other pairs, not one shifted copy
    assert len({tuple(w) for w in wrong.tolist()}) > 100


def test_bce_ablations_end_to_end_and_scoring(tmp_path, tiny_classifier):
    classifier_path, ceiling = tiny_classifier
    assert set(ceiling) >= {"hair_acc", "eye_acc", "both_acc"}
    (tmp_path / "testing_tags.txt").write_text(TESTING_TAGS)
    out = tmp_path / "run"
    proc = run_in_process("cdcgan_anime", "--image-size", "32", "--n-images", "128",
                          "--batch-size", "32", "--epochs", "1", "--soft-labels", "--no-normalize",
                          "--act", "selu", "--ngf", "16", "--ndf", "16",
                          "--tags-file", tmp_path / "testing_tags.txt",
                          "--show", "pink hair aqua eyes", "black hair gray eyes",
                          "--classifier", classifier_path, "--eval-every", "1", "--ema", "0",
                          "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.json", "log.csv", "last.pt", "best.pt", "real.png", "losses.png",
                 "progress.gif", "accuracy.png", "samples/epoch_001.png", "samples/cgan.png"):
        assert (out / name).exists(), name
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert any(row["both_acc"] for row in rows)  # an accuracy row was logged
    checkpoint = checkpoints.load_checkpoint(str(out / "last.pt"), "cdcgan_anime")
    assert (checkpoint["history"]["scores"]["epoch"] == [1]
            and "generator_ema" not in checkpoint)  # --ema 0: off
    generator = cdcgan_anime.build_generator(checkpoint["args"])
    generator.load_state_dict(checkpoint["generator"])
    classifier, _ = judges.faces_load_classifier(classifier_path, "cpu")
    scores = judges.faces_score(lambda noise, labels: cdcgan_anime.sample(generator, noise, labels),
                                (100,), classifier, "cpu", n_per_pair=2)
    assert (scores["n"] == 264
            and 0 <= scores["both_acc"] <= min(scores["hair_acc"], scores["eye_acc"]) <= 1)
    images = cdcgan_anime.sample(generator, torch.randn(4, 100),
                                 torch.tensor([[0, 0], [1, 1], [2, 2], [3, 3]]))
    assert images.min() >= -1 and images.max() <= 1  # --no-normalize samples mapped back to [-1, 1]
    # evaluate.py scores the checkpoint with the moved faces judge
    row, = evaluate.main([str(out / "last.pt"), "--no-fid", "--classifier", classifier_path,
                          "--device", "cpu", "--n-samples", "8", "--batch-size", "8",
                          "--faces-per-pair", "3"])
    assert 0 <= row["both_acc"] <= 1 and not row["notes"] and row["faces_judged"] == 3 * 132


def test_generate_grid_pngs_sheets_and_interpolation(tmp_path):
    (tmp_path / "testing_tags.txt").write_text(TESTING_TAGS)
    out = tmp_path / "run"
    cdcgan_anime.main(["--image-size", "32", "--n-images", "32", "--batch-size", "16",
                       "--max-steps", "2", "--ngf", "8", "--ndf", "8", "--ema", "0.9",
                       "--out", str(out), "--no-progress"])
    assert "generator_ema" in checkpoints.load_checkpoint(str(out / "last.pt"))
    grid = tmp_path / "gen" / "faces.png"
    cdcgan_anime.main(["--generate", "3", "--checkpoint", str(out / "last.pt"),
                       "--grid-out", str(grid), "--png-dir", str(tmp_path / "pngs"),
                       "--interpolate", "--tags-file", str(tmp_path / "testing_tags.txt"),
                       "--show", "blue hair red eyes", "--device", "cpu"])
    for name in ("faces.png", "faces_interpolation.png", "faces_conditions.png", "cgan.png"):
        assert (tmp_path / "gen" / name).exists(), name
    assert len(os.listdir(tmp_path / "pngs")) == 3  # N faces per --show pair
    # the tag interpolation: fixed noise, so a row starts and ends at the faces of the two pairs'
    # own tags (no BatchNorm here, so that each face depends on its own inputs only)
    generator = cdcgan_anime.Generator(ngf=8, image_size=32, batch_norm=False)
    sheet, names = cdcgan_anime.tag_interpolation(
        generator, ["blue hair red eyes", "green hair blue eyes"], seed=0)
    assert sheet.shape == (20, 3, 32, 32) and names[0] == "blue/red -> green/blue"
    noise = torch.randn(2, 100, generator=torch.Generator().manual_seed(0)).repeat_interleave(10, 0)
    ends = cdcgan_anime.sample(generator, noise[[0, 9]], torch.tensor([[8, 9], [4, 10]]))
    assert torch.allclose(sheet[[0, 9]], ends, atol=1e-5)
    # N alone: 8
    cdcgan_anime.main(["--generate", "--checkpoint", str(out / "last.pt"), "--device", "cpu"])
    assert (out / "generated.png").exists()


def test_samples_use_standing_statistics_not_their_batch(tmp_path):
    """A face must not depend on the rest of its batch (the course's sheet draws five pairs at a
    time): sample() uses the BatchNorm statistics standing_statistics() sets, which training saves
    and evaluate.py recomputes."""
    out = tmp_path / "run"
    cdcgan_anime.main(["--image-size", "32", "--n-images", "32", "--batch-size", "16",
                       "--max-steps", "3", "--ngf", "8", "--ndf", "8", "--ema", "0.9",
                       "--out", str(out), "--no-progress"])
    checkpoint = checkpoints.load_checkpoint(str(out / "last.pt"))
    loaded = evaluate.LoadedCheckpoint(str(out / "last.pt"), torch.device("cpu"))
    # the same statistics, recomputed on loading
    for name, saved in checkpoint["generator_ema"].items():
        assert torch.equal(loaded.generator.state_dict()[name], saved), name
    noise = torch.randn(6, 100, generator=torch.Generator().manual_seed(1))
    # green hair blue eyes alone, then among other pairs
    one_pair = torch.tensor([[4, 2]]).repeat(6, 1)
    mixed = torch.cat([one_pair, torch.tensor([[h, (h * 5) % 11] for h in range(12)])])
    alone = loaded.sample(noise, one_pair)
    among = loaded.sample(torch.cat([noise, torch.randn(12, 100)]), mixed)[:6]
    assert torch.allclose(alone, among, atol=1e-5)
    # ... and the statistics are those of a batch that mixes every pair: eval mode on a large
    # balanced batch draws what train mode (the batch's own statistics) draws
    pairs = torch.tensor([(h, e) for h in range(12) for e in range(11)]).repeat(8, 1)
    noise = torch.randn(len(pairs), 100, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        own_statistics = loaded.generator.train()(noise, pairs)
    difference = (loaded.sample(noise, pairs) - own_statistics).abs().mean().item()
    assert difference < 0.1 * own_statistics.std().item(), difference


def test_wgan_losses_and_ablations_end_to_end(tmp_path):
    # In-process (main(argv)) to spare the interpreter start-up; the bce test runs the command line
    # itself.
    synthetic.write_faces(str(tmp_path / "extra_data"), n=48, image_size=32, seed=2)
    cdcgan_anime.main(["--loss", "wgan-gp", "--lambda", "1", "--data", "anime",
                       "--data-dir", str(tmp_path), "--image-size", "32", "--batch-size", "16",
                       "--max-steps", "2", "--n-critic", "2", "--ngf", "16", "--ndf", "16",
                       "--out", str(tmp_path / "gp"), "--no-progress"])
    cdcgan_anime.main(["--loss", "wgan-clip", "--no-bn", "--unconditional", "--image-size", "32",
                       "--n-images", "64", "--batch-size", "16", "--max-steps", "2", "--ngf", "16",
                       "--ndf", "16", "--out", str(tmp_path / "clip"), "--no-progress"])
    for run in ("gp", "clip"):
        checkpoint = checkpoints.load_checkpoint(str(tmp_path / run / "last.pt"), "cdcgan_anime")
        assert checkpoint["step"] == 2
    clip_checkpoint = checkpoints.load_checkpoint(str(tmp_path / "clip" / "last.pt"))
    critic_weights = torch.cat([v.flatten() for v in clip_checkpoint["discriminator"].values()])
    assert critic_weights.abs().max() <= 0.02 + 1e-6  # weight clipping happened
    assert not any("embedding" in k for k in clip_checkpoint["generator"])  # unconditional: no tags
    # --n-critic 2: the generator moved at step 2 only (critic-only step 1 leaves its Adam state
    # empty at step 1)
    gp_checkpoint = checkpoints.load_checkpoint(str(tmp_path / "gp" / "last.pt"))
    assert gp_checkpoint["optimizers"]["generator"]["state"][0]["step"] == 1
    assert gp_checkpoint["optimizers"]["discriminator"]["state"][0]["step"] == 2


def test_aux_colour_head_reads_the_image_alone_learns_real_faces_and_trains_the_generator(tmp_path):
    torch.manual_seed(0)
    discriminator = cdcgan_anime.Discriminator(ndf=8, image_size=32, classify=True).eval()
    images = torch.randn(6, 3, 32, 32)
    tags_a, tags_b = torch.randint(0, 11, (6, 2)), torch.randint(0, 11, (6, 2))
    logits_a, colours_a = discriminator(images, tags_a, classify=True)
    logits_b, colours_b = discriminator(images, tags_b, classify=True)
    # the head cannot copy the tags
    assert colours_a.shape == (6, 12 + 11) and torch.equal(colours_a, colours_b)
    assert not torch.allclose(logits_a, logits_b)  # while the real/fake head reads them
    right = torch.full((1, 23), -20.0)
    right[0, 3], right[0, 12 + 5] = 20.0, 20.0
    assert (cdcgan_anime.colour_loss(right, torch.tensor([[3, 5]])).item()
            == pytest.approx(0.0, abs=1e-6))
    assert (cdcgan_anime.colour_loss(torch.zeros(1, 23), torch.tensor([[3, 5]])).item()
            == pytest.approx(np.log(12) + np.log(11), abs=1e-5))
    # The generator's loss carries the colour term: one step with D frozen (lr 0), with and without
    # it.
    args = cdcgan_anime.parse_args(["--image-size", "32", "--ngf", "8", "--ndf", "8",
                                    "--aux-weight", "1"])
    models, optimizers = cdcgan_anime.build(args, torch.device("cpu"))
    optimizers["discriminator"] = torch.optim.SGD(models["discriminator"].parameters(), lr=0.0)
    batch = {"images": torch.rand(8, 3, 32, 32) * 2 - 1, "labels": torch.randint(0, 11, (8, 2))}
    generator_before = {k: v.clone() for k, v in models["generator"].state_dict().items()}
    losses = {}
    for weight in (0.0, 1.0):
        models["generator"].load_state_dict(generator_before)
        torch.manual_seed(1)
        settings = argparse.Namespace(**{**vars(args), "aux_weight": weight})
        losses[weight] = cdcgan_anime.train_step(models, optimizers, batch, settings)
    assert "colour_loss_real" in losses[1.0] and "colour_loss_real" not in losses[0.0]
    # ~ln 12 + ln 11 for an untrained head
    assert losses[1.0]["loss_g"] - losses[0.0]["loss_g"] > 1.0
    # A short run: the head learns the colours of the (embedded) faces; the checkpoint holds it.
    out = tmp_path / "aux"
    cdcgan_anime.main(["--aux-weight", "1", "--image-size", "32", "--n-images", "512",
                       "--batch-size", "32", "--max-steps", "48", "--log-every", "8",
                       "--ngf", "16", "--ndf", "16", "--out", str(out), "--no-progress"])
    with open(out / "log.csv", newline="") as f:
        colour_losses = [float(row["colour_loss_real"]) for row in csv.DictReader(f)]
    assert colour_losses[-1] < 0.8 * colour_losses[0], colour_losses
    checkpoint = checkpoints.load_checkpoint(str(out / "last.pt"), "cdcgan_anime")
    assert checkpoint["args"]["aux_weight"] == 1
    assert any(k.startswith("classifier.") for k in checkpoint["discriminator"])


def test_gradient_penalty_is_zero_for_unit_slope_critic():
    weight = torch.zeros(3, 4, 4)
    weight[0, 0, 0] = 1.0  # D(x) = x[0, 0, 0]: gradient norm exactly 1 everywhere
    critic = lambda images, labels: (images * weight).flatten(1).sum(1)  # noqa: E731
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    assert (cdcgan_anime.gradient_penalty(critic, real, fake, None).item()
            == pytest.approx(0.0, abs=1e-6))
    steep = lambda images, labels: 3 * (images * weight).flatten(1).sum(1)  # noqa: E731
    assert (cdcgan_anime.gradient_penalty(steep, real, fake, None).item()
            == pytest.approx(4.0, abs=1e-5))


def test_bad_input_messages(tmp_path, capsys):
    proc = run_in_process("cdcgan_anime", "--show", "silver hair blue eyes",
                          "--out", tmp_path / "silver")
    assert_clean_error(proc, "silver", "hair")
    folder = tmp_path / "extra_data"
    synthetic.write_faces(str(folder), n=4, image_size=32, seed=0)
    (folder / "tags.csv").write_text("0,blue hair red eyes\n1,blue hair\n")
    with pytest.raises(common.UserError, match="tags.csv line 2"):
        cdcgan_anime.main(["--data", "anime", "--data-dir", str(folder),
                           "--out", str(tmp_path / "run")])
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
    # tag files with a BOM, Windows line ends or Latin-1 bytes: read, or one line naming the row
    (folder / "tags.csv").write_bytes(b"\xef\xbb\xbf0,blue hair red eyes\r\n"
                                      b"1,pink hair red eyes\r\n")
    assert cdcgan_anime.load_anime(str(folder), 32, verbose=False)[1].tolist() == [[8, 9], [7, 9]]
    (folder / "tags.csv").write_bytes(b"0,blue hair red eyes\n1,blond\xe9 hair red eyes\n")
    with pytest.raises(common.UserError, match="line 2.*blond\u00e9"):
        cdcgan_anime.load_anime(str(folder), 32, verbose=False)
    # --eval-every: the classifier is checked in setup, before anything is written
    (tmp_path / "not_a_classifier.pt").write_text("hello")
    for classifier, needle in ((tmp_path / "missing.pt", "no attribute classifier"),
                               (tmp_path / "not_a_classifier.pt", "cannot load checkpoint")):
        with pytest.raises(common.UserError, match=needle):
            cdcgan_anime.main(["--n-images", "16", "--image-size", "32", "--batch-size", "8",
                               "--eval-every", "1", "--classifier", str(classifier),
                               "--out", str(tmp_path / "scored")])
        assert not (tmp_path / "scored").exists()
    with pytest.raises(SystemExit):
        cdcgan_anime.parse_args(["--unconditional", "--eval-every", "1"])
    assert "unconditional" in capsys.readouterr().err


def test_face_count_on_sheets(shared_data, tmp_path):
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is optional")
    if not hasattr(cv2, "CascadeClassifier"):
        pytest.skip(f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved it out): "
                    "needs opencv<5")
    cascade = os.path.join(shared_data, "lbpcascade_animeface.xml")
    if not os.path.isfile(cascade):
        pytest.skip("lbpcascade_animeface.xml not in ../shared/data")
    assert judges.faces_count(torch.zeros(25, 3, 64, 64), cascade) == 0
    images, _, _ = synthetic.faces(25, 32, seed=1)
    sheet = image_io.save_grid(images.float() / 127.5 - 1, str(tmp_path / "cgan.png"), nrow=5)
    # the cartoon faces look like faces to the cascade too
    assert judges.faces_count(sheet, cascade) >= 15
    with pytest.raises(common.UserError, match="cascade"):
        judges.faces_count(sheet, str(tmp_path / "missing.xml"))
    # the two ways to run the course's check on a checkpoint: generate's cgan.png, and
    # evaluate.py --face-count
    (tmp_path / "testing_tags.txt").write_text(TESTING_TAGS)
    cdcgan_anime.main(["--image-size", "32", "--n-images", "16", "--batch-size", "8",
                       "--max-steps", "1", "--ngf", "8", "--ndf", "8",
                       "--out", str(tmp_path / "run"), "--no-progress"])
    checkpoint = str(tmp_path / "run" / "last.pt")
    cdcgan_anime.main(["--generate", "--checkpoint", checkpoint,
                       "--tags-file", str(tmp_path / "testing_tags.txt"),
                       "--cascade", cascade, "--device", "cpu"])
    assert (tmp_path / "run" / "cgan.png").exists()
    row, = evaluate.main([checkpoint, "--no-fid", "--face-count", "--cascade", cascade,
                          "--classifier", str(tmp_path / "missing.pt"), "--device", "cpu",
                          "--n-samples", "8", "--batch-size", "8"])
    assert 0 <= row["faces_found"] <= 25


def test_face_count_draws_the_course_test_pairs(tmp_path, monkeypatch):
    cdcgan_anime.main(["--image-size", "32", "--n-images", "16", "--batch-size", "8",
                       "--max-steps", "1", "--ngf", "8", "--ndf", "8",
                       "--out", str(tmp_path / "run"), "--no-progress"])
    drawn = {}
    real_sample = cdcgan_anime.sample

    def recording_sample(generator, noise, labels):  # notes the tags of the first sheet drawn
        drawn.setdefault("labels", labels.cpu())
        return real_sample(generator, noise, labels)
    monkeypatch.setattr(cdcgan_anime, "sample", recording_sample)
    monkeypatch.setattr(judges, "faces_count",
                        lambda images, cascade: drawn.update(images=images) or 7)
    loaded = evaluate.LoadedCheckpoint(str(tmp_path / "run" / "last.pt"), torch.device("cpu"))
    args = type("Args", (), {"seed": 0, "cascade": "unused.xml"})()
    assert evaluate.face_count(loaded, args) == 7 and drawn["images"].shape == (25, 3, 32, 32)
    names = [f"{cdcgan_anime.HAIR_COLOURS[h]} hair {cdcgan_anime.EYE_COLOURS[e]} eyes"
             for h, e in drawn["labels"].tolist()]
    # testing_tags.txt, row by row
    assert names == [pair for pair in cdcgan_anime.REPORT_PAIRS for _ in range(5)]
