"""Object scenes (synthetic.py), the i-CLEVR loader and score, and cgan_objects.py end to end on tiny data."""

import csv
import json
import os

import numpy as np
import pytest
import torch

import cgan_objects
import common
import synthetic
from conftest import REPO, run_script

TINY = ["--image-size", "32", "--n-scenes", "128", "--batch-size", "32", "--ndf", "8", "--ngf", "8",
        "--cond-dim", "8", "--log-every", "1", "--no-progress"]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


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
    assert synthetic.SCENE_OBJECTS[:2] == ["gray cube", "red cube"] and synthetic.SCENE_OBJECTS[8] == "gray sphere"
    assert synthetic.SCENE_OBJECTS[23] == "yellow cylinder"


def test_pixel_at_each_object_centre_has_its_label_colour():
    """The colour drawn in the middle of every object is (by direction in RGB space) its label's colour."""
    layouts = synthetic.scene_layouts(60, seed=11)
    width, height = 128, 96
    images = synthetic.render_scenes(layouts, width, height).float()
    palette = torch.tensor(list(synthetic.SCENE_COLOURS.values()), dtype=torch.float32)
    palette = palette / palette.norm(dim=1, keepdim=True)
    checked = 0
    for image, scene in zip(images, layouts):
        for obj in scene:
            x, y = obj.centre()
            pixel = image[:, int(y / synthetic.FRAME_H * height), int(x / synthetic.FRAME_W * width)]
            nearest = int((palette @ (pixel / pixel.norm())).argmax())
            assert nearest == obj.label % 8, (synthetic.SCENE_OBJECTS[obj.label], pixel.tolist())
            checked += 1
    assert checked > 100
    # and the labels that scenes() returns are the drawn objects
    _, labels = synthetic.scenes(60, 32, seed=11)
    assert torch.equal(labels, synthetic.multi_hot([[o.label for o in scene] for scene in layouts]))


def test_write_iclevr_is_read_by_the_loader(tmp_path, capsys):
    data = tmp_path / "iclevr_data"
    synthetic.main(["objects", "--out", str(data), "--n", "5", "--image-size", "48"])  # python synthetic.py objects
    train = json.loads((data / "train.json").read_text())
    assert len(train) == 15 and (data / "iclevr" / "CLEVR_train_000004_2.png").exists()
    for scene in range(5):  # t = 0, 1, 2: the same scene with objects added one at a time
        lists = [train[f"CLEVR_train_{scene:06d}_{t}.png"] for t in range(3)]
        assert [len(x) for x in lists] == [1, 2, 3] and lists[1][:1] == lists[0] and lists[2][:2] == lists[1]
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
        assert sorted(synthetic.SCENE_OBJECTS[j] for j in labels[i].nonzero().flatten().tolist()) == sorted(train[f])
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
    assert lists["test"].shape == (32, 24) and lists["test"].sum() == 72 and lists["new_test"].sum() == 84


# ---------------------------------------------------------------------------
# The lab's score
# ---------------------------------------------------------------------------
def test_iclevr_score_known_answers():
    conditions = torch.zeros(3, 24)
    conditions[0, [1]] = 1
    conditions[1, [2, 9]] = 1
    conditions[2, [3, 10, 20]] = 1
    assert cgan_objects.iclevr_score(conditions * 0.9 + 0.05, conditions) == 1.0
    assert cgan_objects.iclevr_score(1 - conditions, conditions) == 0.0
    partial = torch.zeros(3, 24)
    partial[0, 1] = 1  # 1 of 1
    partial[1, [2, 5]] = torch.tensor([0.9, 0.8])  # 1 of 2 (label 9 is not in the top 2)
    partial[2, [3, 4, 5]] = torch.tensor([0.9, 0.8, 0.7])  # 1 of 3
    assert cgan_objects.iclevr_score(partial, conditions) == pytest.approx(3 / 6)
    assert cgan_objects.iclevr_score(partial[2:], conditions[2:]) == pytest.approx(1 / 3)


def as_object_sets(conditions):
    return [tuple(c.nonzero().flatten().tolist()) for c in conditions]


def test_validation_conditions_are_held_out_and_lab_shaped():
    unfiltered = cgan_objects.validation_conditions({})
    scored = {"test": unfiltered[::4]}  # a scored list that holds 8 of the conditions seed 3 draws first
    validation = cgan_objects.validation_conditions(scored)
    assert validation.shape == (32, 24)
    assert sorted(validation.sum(1).int().tolist()) == [1] * 3 + [2] * 12 + [3] * 17
    assert torch.equal(validation, cgan_objects.validation_conditions(scored))  # the same every run
    chosen = as_object_sets(validation)
    assert len(set(chosen)) == 32 and not set(chosen) & set(as_object_sets(scored["test"]))
    # the lists a run scores (the lab's when ../shared/data is there, else synthetic ones): none of them either
    lists, _ = cgan_objects.find_condition_lists()
    chosen = as_object_sets(cgan_objects.validation_conditions(lists))
    assert not set(chosen) & {c for conditions in lists.values() for c in as_object_sets(conditions)}


# ---------------------------------------------------------------------------
# DiffAugment translation of what the discriminator sees
# ---------------------------------------------------------------------------
def test_translate_shifts_each_picture_with_zero_fill_and_passes_gradients():
    torch.manual_seed(0)
    images = (torch.arange(8 * 3 * 16 * 16, dtype=torch.float32).view(8, 3, 16, 16) + 1).requires_grad_(True)
    shifted = cgan_objects.translate(images, 0.125)  # up to 2 px at 16 px
    padded = torch.nn.functional.pad(images.detach(), (2, 2, 2, 2))
    shifts_seen = set()
    for i in range(len(images)):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(shifted[i].detach(), padded[i, :, 2 + dy:18 + dy, 2 + dx:18 + dx])]
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


def test_bad_condition_lists_fail_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # what `python cgan_objects.py ...` does, in this process
        common.run_main(cgan_objects.main, ["--test-dir", str(write_lists(tmp_path / "a", [["red cube", "pink cube"]])),
                                            *TINY, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "unknown object name 'pink cube'" in err and "test.json entry 0" in err
    assert not (tmp_path / "run").exists()  # nothing written before the inputs are checked
    with pytest.raises(common.UserError, match="empty condition"):
        cgan_objects.read_condition_lists(str(write_lists(tmp_path / "b", [["red cube"], []])))
    with pytest.raises(common.UserError, match="4 objects"):
        cgan_objects.read_condition_lists(str(write_lists(tmp_path / "c", [["red cube", "blue cube", "gray cube",
                                                                               "cyan cube"]])))
    with pytest.raises(common.UserError, match="must hold test.json"):
        cgan_objects.find_condition_lists(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------------------
# End to end: every --d-cond and every --loss once, then the checkpoint scored again
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("classifier") / "objects.pt"
    result = cgan_objects.train_classifier(str(path), epochs=1, n_scenes=64, n_held_out=16, width=4,
                                           batch_size=64, log=lambda *a: None)
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
    if d_cond == "projection" and loss == "hinge":  # the defaults: through the command line
        run_script("cgan_objects.py", *argv)
    else:  # the same code in this process (saves the interpreter start)
        cgan_objects.main(argv)
    for name in ("config.json", "last.pt", "best.pt", "log.csv", "scores.csv", "losses.png", "progress.gif",
                 "samples/epoch_001.png", "samples/new_test_epoch_001.png"):
        assert (out / name).exists(), name
    assert [int(r["step"]) for r in read_csv(out / "log.csv")] == [1, 2, 3]
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert checkpoint["script"] == "cgan_objects" and checkpoint["step"] == 3 and checkpoint["finished"]
    assert checkpoint["args"]["d_cond"] == d_cond and checkpoint["args"]["loss"] == loss
    assert checkpoint["args"]["translate"] == (0.0 if "--translate" in extra else 0.125)
    # conditional BatchNorm in the generator (the default) or the condition only at its input (--g-cond concat)
    has_cbn = any(k.startswith("norms.0.scale") for k in checkpoint["generator"])
    assert has_cbn == ("concat" not in extra)
    has_aux_head = any(k.startswith("aux_classifier") for k in checkpoint["discriminator"])
    assert has_aux_head == ("--no-acgan" not in extra)
    if "--ema" in extra:  # grids and scores come from the moving average; the trained weights are kept to resume
        assert not torch.equal(checkpoint["generator"]["convs.0.weight"], checkpoint["generator_trained"]["convs.0.weight"])
    else:
        assert "generator_trained" not in checkpoint
    scores = read_csv(out / "scores.csv")[-1]
    assert 0.0 <= float(scores["test"]) <= 1.0
    # best.pt is picked on the held-out validation conditions, not on the lists it is scored on
    best = torch.load(out / "best.pt", weights_only=True)["history"]["best"]
    assert best["score"] == pytest.approx(float(scores["validation"]), abs=1e-6)
    assert best["test"] == pytest.approx(float(scores["test"]), abs=1e-6)
    if d_cond == "projection" and loss == "hinge":
        # the checkpoint, scored again from outside, gives the numbers the run logged
        generator = cgan_objects.build_generator(checkpoint["args"])
        generator.load_state_dict(checkpoint["generator"])
        again = cgan_objects.score_generator(generator, checkpoint["args"], tiny_classifier)
        assert again["test"] == pytest.approx(float(scores["test"]), abs=1e-5)
        assert again["new_test_mean"] == pytest.approx(float(scores["new_test_mean"]), abs=1e-5)
        assert "lists" in again and again["repeats"] == 10
        held_out = torch.load(tiny_classifier, weights_only=True)["held_out"]
        assert again["classifier_ceiling"] == held_out["scenes at 32 px, upsampled"]


def test_resume_of_a_run_whose_best_was_picked_on_the_scored_lists(tmp_path, tiny_classifier):
    """Runs saved before best.pt was picked on the validation conditions: the old pick is dropped, not compared."""
    out = tmp_path / "run"
    argv = ["--classifier", tiny_classifier, "--out", str(out), *TINY]
    cgan_objects.main([*argv, "--epochs", "1"])
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    checkpoint["history"]["best"] = {"score": 2.0, "epoch": 1, "step": 4}  # the old record: no test/new_test
    common.save_checkpoint(str(out / "last.pt"), checkpoint)
    cgan_objects.main([*argv, "--epochs", "2", "--resume", "auto"])
    best = torch.load(out / "best.pt", weights_only=True)["history"]["best"]
    validation = float(read_csv(out / "scores.csv")[-1]["validation"])
    assert best["epoch"] == 2 and best["score"] == pytest.approx(validation, abs=1e-6)


def test_evaluate_py_scores_a_checkpoint(tmp_path, tiny_classifier):
    if not os.path.exists(os.path.join(REPO, "evaluate.py")):
        pytest.skip("evaluate.py is not there yet")
    out = tmp_path / "run"
    cgan_objects.main(["--epochs", "1", "--max-steps", "2", "--classifier", tiny_classifier, "--out", str(out), *TINY])
    logged = read_csv(out / "scores.csv")[-1]
    import evaluate

    rows = evaluate.main([str(out / "last.pt"), "--classifier", tiny_classifier, "--no-fid", "--n-samples", "32"])
    assert rows[0]["test"] == pytest.approx(float(logged["test"]), abs=1e-5)
    assert rows[0]["new_test"] == pytest.approx(float(logged["new_test"]), abs=1e-5)


def test_classifier_reads_the_course_resnet_checkpoint(tmp_path):
    """The lab's evaluator: ResNet-18 with fc = Sequential(Linear(512, 24), Sigmoid), saved as {'model': ...}."""
    import torchvision

    resnet = torchvision.models.resnet18(num_classes=24)
    state = {k.replace("fc.", "fc.0."): v for k, v in resnet.state_dict().items()}
    torch.save({"model": state}, tmp_path / "checkpoint.pth")
    loaded = cgan_objects.load_classifier(str(tmp_path / "checkpoint.pth"), torch.device("cpu"))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(cgan_objects.classify(loaded, images),
                          resnet.eval()(cgan_objects.to_classifier_input(images)), atol=1e-5)
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(common.UserError, match="not an object classifier"):
        cgan_objects.load_classifier(str(tmp_path / "other.pth"), torch.device("cpu"))


def test_generate_draws_the_requested_objects_grid(tmp_path, tiny_classifier):
    out = tmp_path / "run"
    cgan_objects.main(["--epochs", "1", "--max-steps", "1", "--classifier", tiny_classifier, "--out", str(out), *TINY])
    grid = tmp_path / "grid.png"
    cgan_objects.main(["--generate", "--checkpoint", str(out / "last.pt"), "--objects", "red cube", "blue sphere",
                       "--grid-out", str(grid)])
    assert grid.exists()
    with pytest.raises(common.UserError, match="unknown object name 'a b c d'"):
        cgan_objects.main(["--generate", "--checkpoint", str(out / "last.pt"), "--objects", "a b c d"])
