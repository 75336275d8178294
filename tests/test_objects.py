"""Object scenes (synthetic.py), the i-CLEVR loader, the objects judge in judges.py (classifier and
the lab's score), and cgan_objects.py end to end on tiny data."""

import csv
import json
import os

import pytest
import torch

import cgan_objects
import checkpoints
import common
import evaluate
import judges
import synthetic
from conftest import SHARED_DATA, run_in_process

TINY = ["--image-size", "32", "--n-images", "128", "--batch-size", "32", "--ndf", "8", "--ngf", "8",
        "--cond-dim", "8", "--log-every", "1", "--no-progress"]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def loss_rows(folder):
    return [r for r in read_csv(folder / "log.csv") if r["loss_d"]]


def score_rows(folder):
    return [r for r in read_csv(folder / "log.csv") if r.get("validation")]


# ---------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------
def test_scenes_are_deterministic_and_well_formed():
    images, labels = synthetic.scenes(40, image_size=32, seed=5)
    again, again_labels = synthetic.scenes(40, image_size=32, seed=5)
    other, _ = synthetic.scenes(40, image_size=32, seed=6)
    assert images.dtype == torch.uint8 and images.shape == (40, 3, 32, 32)
    assert labels.shape == (40, 24) and set(labels.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    assert not torch.equal(images, other)
    counts = labels.sum(1)
    assert counts.min() >= 1 and counts.max() <= 3 and len(counts.unique()) == 3
    assert (synthetic.SCENE_OBJECTS[:2] == ["gray cube", "red cube"]
            and synthetic.SCENE_OBJECTS[8] == "gray sphere")
    assert synthetic.SCENE_OBJECTS[23] == "yellow cylinder"
    # the script's copy of the names, in the lab's order
    assert cgan_objects.OBJECTS == synthetic.SCENE_OBJECTS


def test_pixel_at_each_object_centre_has_its_label_colour():
    """The colour drawn in the middle of every object is (by direction in RGB space) its label's
    colour."""
    layouts = synthetic.scene_layouts(60, seed=11)
    width, height = 128, 96
    images = synthetic.render_scenes(layouts, width, height).float()
    palette = torch.tensor(list(synthetic.SCENE_COLOURS.values()), dtype=torch.float32)
    palette = palette / palette.norm(dim=1, keepdim=True)
    checked = 0
    for image, scene in zip(images, layouts):
        for obj in scene:
            x, y = obj.centre()
            pixel = image[:, int(y / synthetic.FRAME_H * height),
                          int(x / synthetic.FRAME_W * width)]
            nearest = int((palette @ (pixel / pixel.norm())).argmax())
            assert nearest == obj.label % 8, (synthetic.SCENE_OBJECTS[obj.label], pixel.tolist())
            checked += 1
    assert checked > 100
    # and the labels that scenes() returns are the drawn objects
    _, labels = synthetic.scenes(60, 32, seed=11)
    assert torch.equal(labels, synthetic.multi_hot([[o.label for o in scene] for scene in layouts]))


def test_write_iclevr_is_read_by_the_loader(tmp_path, capsys):
    data = tmp_path / "iclevr_data"
    # python synthetic.py objects
    synthetic.main(["objects", "--out", str(data), "--n", "5", "--image-size", "48"])
    train = json.loads((data / "train.json").read_text())
    assert len(train) == 15 and (data / "iclevr" / "CLEVR_train_000004_2.png").exists()
    for scene in range(5):  # t = 0, 1, 2: the same scene with objects added one at a time
        lists = [train[f"CLEVR_train_{scene:06d}_{t}.png"] for t in range(3)]
        assert ([len(x) for x in lists] == [1, 2, 3] and lists[1][:1] == lists[0]
                and lists[2][:2] == lists[1])
    objects = json.loads((data / "objects.json").read_text())
    assert objects == {name: i for i, name in enumerate(synthetic.SCENE_OBJECTS)}
    test_lists = json.loads((data / "test.json").read_text())
    new_lists = json.loads((data / "new_test.json").read_text())
    assert sorted(len(x) for x in test_lists) == [1] * 6 + [2] * 12 + [3] * 14
    assert sorted(len(x) for x in new_lists) == [2] * 12 + [3] * 20

    images, labels = cgan_objects.load_iclevr(str(data), 32)
    assert images.shape == (15, 3, 32, 32) and images.dtype == torch.uint8
    files = sorted(train)
    for i, f in enumerate(files):
        assert (sorted(synthetic.SCENE_OBJECTS[j] for j in labels[i].nonzero().flatten().tolist())
                == sorted(train[f]))
    assert (data / "cache_32px.pt").exists()
    cached, _ = cgan_objects.load_iclevr(str(data), 32)
    assert torch.equal(cached, images)
    lists = cgan_objects.read_condition_lists(str(data))
    assert lists["test"].sum() == 72 and lists["new_test"].sum() == 84

    # a picture listed in train.json but missing: skipped, and the count is reported
    os.remove(data / "iclevr" / files[3])
    os.remove(data / "cache_32px.pt")
    images, labels = cgan_objects.load_iclevr(str(data), 32)
    assert len(images) == len(labels) == 14
    assert "1 of 15 images listed in train.json are missing" in capsys.readouterr().err


def test_course_lists_are_read(shared_data):
    lists = cgan_objects.read_condition_lists(os.path.join(shared_data, "iclevr"))
    assert (lists["test"].shape == (32, 24) and lists["test"].sum() == 72
            and lists["new_test"].sum() == 84)


# ---------------------------------------------------------------------------
# The lab's score (evaluate.py's objects judge)
# ---------------------------------------------------------------------------
def test_iclevr_score_known_answers():
    conditions = torch.zeros(3, 24)
    conditions[0, [1]] = 1
    conditions[1, [2, 9]] = 1
    conditions[2, [3, 10, 20]] = 1
    assert judges.iclevr_score(conditions * 0.9 + 0.05, conditions) == 1.0
    assert judges.iclevr_score(1 - conditions, conditions) == 0.0
    partial = torch.zeros(3, 24)
    partial[0, 1] = 1  # 1 of 1
    partial[1, [2, 5]] = torch.tensor([0.9, 0.8])  # 1 of 2 (label 9 is not in the top 2)
    partial[2, [3, 4, 5]] = torch.tensor([0.9, 0.8, 0.7])  # 1 of 3
    assert judges.iclevr_score(partial, conditions) == pytest.approx(3 / 6)
    assert judges.iclevr_score(partial[2:], conditions[2:]) == pytest.approx(1 / 3)


def as_object_sets(conditions):
    return [tuple(c.nonzero().flatten().tolist()) for c in conditions]


def test_validation_conditions_are_held_out_and_lab_shaped():
    unfiltered = cgan_objects.validation_conditions({})
    # a scored list that holds 8 of the conditions seed 3 draws first
    scored = {"test": unfiltered[::4]}
    validation = cgan_objects.validation_conditions(scored)
    assert validation.shape == (32, 24)
    assert sorted(validation.sum(1).int().tolist()) == [1] * 3 + [2] * 12 + [3] * 17
    assert torch.equal(validation, cgan_objects.validation_conditions(scored))  # the same every run
    chosen = as_object_sets(validation)
    assert len(set(chosen)) == 32 and not set(chosen) & set(as_object_sets(scored["test"]))
    # the lists a run scores (synthetic ones, and the lab's when ../shared/data is there):
    # none of them either
    lab = os.path.join(SHARED_DATA, "iclevr")
    for test_dir in [None] + ([lab] if os.path.isfile(os.path.join(lab, "test.json")) else []):
        lists, _ = cgan_objects.find_condition_lists(test_dir)
        chosen = as_object_sets(cgan_objects.validation_conditions(lists))
        assert not set(chosen) & {c for conditions in lists.values()
                                  for c in as_object_sets(conditions)}


def test_lists_come_from_the_command_line_or_the_embedded_ones():
    """The script points at nothing outside itself: without --test-dir (or --data iclevr with lists
    in --data-dir) it scores the synthetic lists, even where ../shared/data/iclevr exists."""
    lists, source = cgan_objects.find_condition_lists()
    assert (source.startswith("synthetic") and lists["test"].sum() == 72
            and lists["new_test"].sum() == 84)
    _, source = cgan_objects.find_condition_lists(None, {"data": "synthetic", "data_dir": "data"})
    assert source.startswith("synthetic")


# ---------------------------------------------------------------------------
# DiffAugment translation of what the discriminator sees
# ---------------------------------------------------------------------------
def test_translate_shifts_each_picture_with_zero_fill_and_passes_gradients():
    torch.manual_seed(0)
    images = (torch.arange(8 * 3 * 16 * 16, dtype=torch.float32).view(8, 3, 16, 16)
              + 1).requires_grad_(True)
    shifted = cgan_objects.translate(images, 0.125)  # up to 2 px at 16 px
    padded = torch.nn.functional.pad(images.detach(), (2, 2, 2, 2))
    shifts_seen = set()
    for i in range(len(images)):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(shifted[i].detach(),
                                  padded[i, :, 2 + dy:18 + dy, 2 + dx:18 + dx])]
        assert len(matches) == 1, f"picture {i} is not a shifted copy"
        shifts_seen.add(matches[0])
    assert len(shifts_seen) > 1  # a shift per picture, not one for the batch
    # differentiable: the generator learns through it; each kept pixel passes its gradient back once
    shifted.sum().backward()
    assert torch.equal(images.grad.sum(), (shifted != 0).sum().float())
    assert set(images.grad.unique().tolist()) <= {0.0, 1.0}
    assert cgan_objects.translate(images, 0.0) is images
    assert cgan_objects.translate(images, 0.01) is images  # less than half a pixel: no shift


# ---------------------------------------------------------------------------
# Bad input: one clear line each
# ---------------------------------------------------------------------------
def write_lists(folder, test, new_test=(["red cube"],)):
    folder.mkdir()
    (folder / "test.json").write_text(json.dumps(test))
    (folder / "new_test.json").write_text(json.dumps(list(new_test)))
    return folder


def one_error_line(argv, capsys):
    """`python cgan_objects.py argv` in this process: the exit status and its single `error:`
    line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        common.run_main(cgan_objects.main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_condition_lists_fail_with_one_line(tmp_path, capsys):
    err = one_error_line(
        ["--test-dir", str(write_lists(tmp_path / "a", [["red cube", "pink cube"]])), *TINY,
         "--out", str(tmp_path / "run")], capsys)
    assert "unknown object name 'pink cube'" in err and "test.json entry 0" in err
    assert not (tmp_path / "run").exists()  # nothing written before the inputs are checked
    with pytest.raises(common.UserError, match="empty condition"):
        cgan_objects.read_condition_lists(str(write_lists(tmp_path / "b", [["red cube"], []])))
    with pytest.raises(common.UserError, match="4 objects"):
        cgan_objects.read_condition_lists(str(write_lists(tmp_path / "c",
                                                          [["red cube", "blue cube", "gray cube",
                                                            "cyan cube"]])))
    with pytest.raises(common.UserError, match="must hold test.json"):
        cgan_objects.find_condition_lists(str(tmp_path / "nowhere"))


def iclevr_folder(folder, objects=None, train=None):
    """A tiny i-CLEVR folder with objects.json and train.json as given (raw text, or JSON-encoded
    values)."""
    folder.mkdir()
    objects = (objects if objects is not None
               else {name: i for i, name in enumerate(cgan_objects.OBJECTS)})
    train = train if train is not None else {"a.png": ["red cube"]}
    for name, value in (("objects.json", objects), ("train.json", train)):
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        (folder / name).write_bytes(data)
    return str(folder)


def test_bad_json_files_fail_with_one_line(tmp_path, capsys):
    """A string index, a nested list as an object name, JSON nested beyond Python's recursion limit
    and Latin-1 text: one `error:` line each, never a traceback. A byte-order mark is fine."""
    string_index = {name: str(i) for i, name in enumerate(cgan_objects.OBJECTS)}
    cases = [("string_index", {"objects": string_index}, "whole numbers"),
             ("nested_entry", {"train": {"a.png": [["red cube"]]}},
              "unknown object name ['red cube']"),
             ("deep", {"train": b"[" * 100_000 + b"]" * 100_000}, "cannot read"),
             ("latin1",
              {"train": '{"a.png": ["red cube"], "b\u00e9.png": ["red cube"]}'.encode("latin-1")},
              "cannot read")]
    for name, files, needle in cases:
        folder = iclevr_folder(tmp_path / name, **files)
        err = one_error_line(["--data", "iclevr", "--data-dir", folder, *TINY,
                              "--out", str(tmp_path / "run")], capsys)
        assert needle in err, (name, err)
    assert not (tmp_path / "run").exists()
    bom = write_lists(tmp_path / "bom", [["red cube"]])
    (bom / "test.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([["blue sphere"]]).encode())
    assert cgan_objects.read_condition_lists(str(bom))["test"].sum() == 1


# ---------------------------------------------------------------------------
# End to end: every --d-cond and every --loss once, then the checkpoint scored again
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("classifier") / "objects.pt"
    result = judges.objects_train_classifier(str(path), epochs=1, n_scenes=64, n_held_out=16,
                                             width=4, batch_size=64, log=lambda *a: None)
    assert set(result["held_out"]) == {"scenes at 64 px", "scenes at 32 px, upsampled"}
    return str(path)


@pytest.mark.parametrize("d_cond, loss, extra", [
    ("projection", "hinge", []),
    ("map", "bce", ["--acgan", "--ema", "0.9", "--g-cond", "concat"]),
    ("channels", "wgan-gp", ["--n-critic", "2", "--no-acgan"]),
    ("projection", "wgan-clip", ["--step-lr", "1", "--translate", "0"]),
])
def test_end_to_end(tmp_path, tiny_classifier, d_cond, loss, extra):
    out = tmp_path / "run"
    argv = ["--d-cond", d_cond, "--loss", loss, *extra, "--epochs", "1", "--max-steps", "3",
            "--classifier", tiny_classifier, "--out", str(out), *TINY]
    proc = run_in_process("cgan_objects", *argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.json", "real.png", "last.pt", "best.pt", "log.csv", "losses.png",
                 "scores.png", "progress.gif", "samples/epoch_001.png",
                 "samples/new_test_epoch_001.png"):
        assert (out / name).exists(), name
    assert [int(r["step"]) for r in loss_rows(out)] == [1, 2, 3]
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert (checkpoint["script"] == "cgan_objects" and checkpoint["step"] == 3
            and checkpoint["finished"])
    assert checkpoint["args"]["d_cond"] == d_cond and checkpoint["args"]["loss"] == loss
    assert checkpoint["args"]["translate"] == (0.0 if "--translate" in extra else 0.125)
    assert (checkpoint["class_names"] == cgan_objects.OBJECTS
            and checkpoint["fixed_labels"].shape == (32, 24))
    assert (set(checkpoint["schedulers"])
            == ({"generator", "discriminator"} if "--step-lr" in extra else set()))
    # conditional BatchNorm in the generator (the default)
    # or the condition only at its input (--g-cond concat)
    has_cbn = any(k.startswith("norms.0.scale") for k in checkpoint["generator"])
    assert has_cbn == ("concat" not in extra)
    has_aux_head = any(k.startswith("aux_classifier") for k in checkpoint["discriminator"])
    assert has_aux_head == ("--no-acgan" not in extra)
    # `generator` holds the trained weights, `generator_ema` their moving average
    if "--ema" in extra:
        assert not torch.equal(checkpoint["generator"]["convs.0.weight"],
                               checkpoint["generator_ema"]["convs.0.weight"])
    else:
        assert "generator_ema" not in checkpoint
    scores = score_rows(out)[-1]
    assert int(scores["step"]) == 3 and 0.0 <= float(scores["test"]) <= 1.0
    # best.pt is picked on the held-out validation conditions, not on the lists it is scored on
    best = torch.load(out / "best.pt", weights_only=True)["history"]["scores"]
    assert best["validation"][-1] == pytest.approx(float(scores["validation"]), abs=1e-6)
    assert best["test"][-1] == pytest.approx(float(scores["test"]), abs=1e-6)
    if d_cond == "projection" and loss == "hinge":
        # the checkpoint, scored again from outside, gives the numbers the run logged
        generator = cgan_objects.build_generator(checkpoint["args"])
        generator.load_state_dict(checkpoint["generator"])
        again = judges.objects_score_generator(cgan_objects, generator, checkpoint["args"],
                                               tiny_classifier)
        assert again["test"] == pytest.approx(float(scores["test"]), abs=1e-5)
        assert again["new_test_mean"] == pytest.approx(float(scores["new_test_mean"]), abs=1e-5)
        assert "lists" in again and again["repeats"] == 10
        held_out = torch.load(tiny_classifier, weights_only=True)["held_out"]
        assert again["classifier_ceiling"] == held_out["scenes at 32 px, upsampled"]


def test_resume_keeps_the_run_settings_and_picks_best_over_the_whole_run(tmp_path, tiny_classifier,
                                                                         capsys):
    """A resumed run keeps its --step-lr and --ema without being told (a scheduler missing from the
    checkpoint is fine); typing another value is one clear line; best.pt is the best validation
    score of all epochs."""
    out = tmp_path / "run"
    argv = ["--classifier", tiny_classifier, "--out", str(out), *TINY]
    cgan_objects.main([*argv, "--epochs", "1", "--step-lr", "1", "--ema", "0.9"])
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    del checkpoint["schedulers"]  # e.g. a checkpoint written before --step-lr had state to keep
    checkpoints.save_checkpoint(str(out / "last.pt"), checkpoint)
    err = one_error_line([*argv, "--epochs", "2", "--resume", "auto", "--ema", "0.5"], capsys)
    assert "--ema 0.5 differs from 0.9" in err
    cgan_objects.main([*argv, "--epochs", "2", "--resume", "auto"])
    resumed = torch.load(out / "last.pt", weights_only=True)
    assert (resumed["step"] == 8 and resumed["args"]["step_lr"] == 1
            and resumed["args"]["ema"] == 0.9)
    assert ("generator_ema" in resumed
            and set(resumed["schedulers"]) == {"generator", "discriminator"})
    validation = [float(r["validation"]) for r in score_rows(out)]
    assert len(validation) == 2
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == 1 + validation.index(max(validation))
    # finished: says so, trains nothing
    cgan_objects.main([*argv, "--epochs", "2", "--resume", "auto"])
    assert "this run is finished" in capsys.readouterr().err


def test_evaluate_py_scores_a_checkpoint(tmp_path, tiny_classifier):
    out = tmp_path / "run"
    cgan_objects.main(["--epochs", "1", "--max-steps", "2", "--classifier", tiny_classifier,
                       "--out", str(out), *TINY])
    logged = score_rows(out)[-1]
    rows = evaluate.main([str(out / "last.pt"), "--classifier", tiny_classifier, "--no-fid",
                          "--n-samples", "32"])
    assert rows[0]["test"] == pytest.approx(float(logged["test"]), abs=1e-5)
    assert rows[0]["new_test"] == pytest.approx(float(logged["new_test"]), abs=1e-5)


def test_evaluate_py_trains_the_objects_classifier(tmp_path, monkeypatch):
    """`python evaluate.py --train-classifier objects` runs the moved code (on fewer scenes
    here)."""
    tiny_data = judges.objects_training_data
    monkeypatch.setattr(judges, "objects_training_data",
                        lambda real, seed, n_scenes, n_held_out=2000: tiny_data(real, seed, 64, 8))
    path = tmp_path / "objects.pt"
    result = evaluate.main(["--train-classifier", "objects", "--classifier", str(path),
                            "--epochs", "1", "--device", "cpu"])
    assert (result["path"] == str(path)
            and set(result["held_out"]) == {"scenes at 64 px", "scenes at 32 px, upsampled"})
    model = judges.objects_load_classifier(str(path), torch.device("cpu"))
    assert isinstance(model, judges.ObjectClassifier) and model.held_out == result["held_out"]


def test_classifier_reads_the_course_resnet_checkpoint(tmp_path):
    """The lab's evaluator: ResNet-18 with fc = Sequential(Linear(512, 24), Sigmoid), saved as
    {'model': ...}."""
    import torchvision

    resnet = torchvision.models.resnet18(num_classes=24)
    state = {k.replace("fc.", "fc.0."): v for k, v in resnet.state_dict().items()}
    torch.save({"model": state}, tmp_path / "checkpoint.pth")
    loaded = judges.objects_load_classifier(str(tmp_path / "checkpoint.pth"), torch.device("cpu"))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(judges.objects_classify(loaded, images),
                          resnet.eval()(judges.objects_to_classifier_input(images)), atol=1e-5)
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(common.UserError, match="not an object classifier"):
        judges.objects_load_classifier(str(tmp_path / "other.pth"), torch.device("cpu"))


def test_generate_draws_the_requested_objects_grid(tmp_path, tiny_classifier):
    out = tmp_path / "run"
    cgan_objects.main(["--epochs", "1", "--max-steps", "1", "--classifier", tiny_classifier,
                       "--out", str(out), *TINY])
    grid = tmp_path / "grid.png"
    cgan_objects.main(["--generate", "4", "--checkpoint", str(out / "last.pt"),
                       "--objects", "red cube", "blue sphere", "--grid-out", str(grid),
                       "--png-dir", str(tmp_path / "pngs"), "--interpolate"])
    for name in ("grid.png", "grid_interpolation.png", "grid_condition_interpolation.png"):
        assert (tmp_path / name).exists(), name
    assert sorted(os.listdir(tmp_path / "pngs")) == [f"{i:06d}.png" for i in range(4)]
    cgan_objects.main(["--generate", "3", "--checkpoint", str(out / "last.pt"),
                       "--grid-out", str(tmp_path / "any.png")])
    assert (tmp_path / "any.png").exists()  # without --objects: a random object set per picture
    with pytest.raises(common.UserError, match="unknown object name 'a b c d'"):
        cgan_objects.main(["--generate", "2", "--checkpoint", str(out / "last.pt"),
                           "--objects", "a b c d"])
