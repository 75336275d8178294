"""The judges: classifiers that say whether generated pictures show what was asked for.

    letters, cifar10  Classifier, a small VGG-style CNN at 32x32: class accuracy of dcgan_letters,
                      cdcgan_ab and acgan_cifar, the samples' within-class variety (class_spread)
    objects           ObjectClassifier (or the lab's ResNet-18): cgan_objects' i-CLEVR top-k score
    faces             AttributeClassifier: hair and eye colour of cdcgan_anime's faces; the course's
                      face count with OpenCV's anime cascade

Each judge is trained by `python evaluate.py --train-classifier DATASET` and saved under
classifiers/. A judge trains on the embedded data of synthetic.py, or on real labelled images that
evaluate.py reads and hands over as tensors: this module never opens a dataset folder through a
model script, so it imports only common, synthetic (lazily: a copied script with real data needs no
synthetic.py) and the usual libraries. Model scripts import it for their in-run scores
(cgan_objects, cdcgan_anime); where a judge scores a checkpoint it is given the script module, it
does not import it.
"""

import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoints
import common
import image_io

REPO = os.path.dirname(os.path.abspath(__file__))


def classifier_path(dataset):
    """Where `--train-classifier DATASET` saves its classifier and where scoring looks for it."""
    return os.path.join(REPO, "classifiers", f"{dataset}.pt")


def training_bar(total, desc, enabled=True):
    """A progress bar of training steps on stderr (a judge trains for minutes on a CPU)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, disable=not enabled,
                file=sys.stderr, mininterval=1.0)


# ---------------------------------------------------------------------------
# Letters (EMNIST-Balanced's 47 classes) and CIFAR-10
# ---------------------------------------------------------------------------
CLASSIFIER_SIZE = 32
# embedded training letters per character: at 300 the classifier (width 16) read 0.83 of the real
# A/B right, at 1,000 0.90 (docs/dcgan_letters.md)
LETTERS_PER_CHAR = 1000
# channels of the letters classifier's first layer: at 16 it read 0.90 of the real A/B, at 32
# 0.91-0.92 (docs/dcgan_letters.md)
LETTERS_WIDTH = 32


class Classifier(nn.Module):
    """A small VGG-style CNN for 32x32 images: conv, then two conv pairs at 16x16 and 8x8 (BN + ReLU
    after each conv), global average pool, linear. Small enough to train on a laptop CPU in minutes.
    """

    def __init__(self, channels, num_classes, width=16):
        super().__init__()

        def conv(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*conv(channels, width), nn.MaxPool2d(2),
                                      *conv(width, 2 * width), *conv(2 * width, 2 * width),
                                      nn.MaxPool2d(2),
                                      *conv(2 * width, 4 * width), *conv(4 * width, 4 * width),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * width, num_classes))

    def forward(self, images):
        return self.head(self.features(images))


def to_classifier_input(images, channels):
    """Images in [-1, 1] (or uint8) -> float [-1, 1] at 32x32 with `channels`, resized as the
    training data is (area when shrinking, bilinear when enlarging; see
    image_io.to_uint8_images)."""
    x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
    if x.shape[1] == 3 and channels == 1:
        luma = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        x = (x * luma).sum(1, keepdim=True)
    elif x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    size = (CLASSIFIER_SIZE, CLASSIFIER_SIZE)
    if x.shape[-1] > CLASSIFIER_SIZE:
        x = F.interpolate(x, size=size, mode="area")
    elif x.shape[-1] < CLASSIFIER_SIZE:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x


def letter_class(char):
    """EMNIST-Balanced class of a character: c i j k l m o p s u v w x y z share their capital's
    class."""
    import synthetic

    if not isinstance(char, str) or len(char) != 1:
        return None
    if char in image_io.EMNIST_BALANCED:
        return image_io.EMNIST_BALANCED.index(char)
    if char.upper() in image_io.EMNIST_BALANCED:
        return image_io.EMNIST_BALANCED.index(char.upper())
    return None


def embedded_letters_data(n_per_class, seed):
    """(train images, labels, held-out images, labels, trained_on) of the embedded letters, uint8
    (N, 1, 32, 32), labels = EMNIST-Balanced classes: every class drawn from its characters (lower
    and upper case where EMNIST merges them)."""
    import synthetic

    merged = [c for c in synthetic.LETTER_CHARS
              if c not in image_io.EMNIST_BALANCED and letter_class(c) is not None]
    chars = list(image_io.EMNIST_BALANCED) + merged
    to_class = torch.tensor([letter_class(c) for c in chars])
    size = CLASSIFIER_SIZE
    images, index = synthetic.letters(chars, n_per_class, image_size=size, seed=seed + 7919)
    held, held_index = synthetic.letters(chars, max(2, n_per_class // 6), image_size=size,
                                         seed=seed + 104729)
    return (images, to_class[index], held, to_class[held_index],
            f"{len(images)} synthetic (embedded) letters")


def classifier_images(checkpoint):
    """What a classifier's held-out accuracy (its ceiling) was measured on: "embedded" or "real"."""
    if "ceiling_on" in checkpoint:
        return checkpoint["ceiling_on"]
    return "embedded" if "synthetic" in str(checkpoint.get("trained_on", "")) else "real"


def train_classifier(dataset, out_path=None, data=None, device="cpu", seed=0, epochs=None,
                     n_per_class=LETTERS_PER_CHAR, verbose=True):
    """Train the letters or CIFAR-10 classifier and save it; returns {path, held_out_accuracy,
    ceiling_on, trained_on, seconds}. `data`: (train images, labels, held-out images, labels,
    trained_on) of real labelled images, uint8 (N, C, 32, 32), as evaluate.py reads them (a letters
    folder, CIFAR-10); None: the embedded letters (letters only)."""
    start = time.perf_counter()
    out_path = out_path or classifier_path(dataset)
    device = torch.device(device)
    torch.manual_seed(seed)
    if dataset == "letters":
        import synthetic

        data = data or embedded_letters_data(n_per_class, seed)
        images, labels, held, held_labels, trained_on = data
        classes, channels, width, flip = list(image_io.EMNIST_BALANCED), 1, LETTERS_WIDTH, False
        epochs = epochs or 4
    else:
        if data is None:
            raise common.UserError("the CIFAR-10 classifier trains on the real CIFAR-10 only: pass "
                                   "its images (evaluate.py --train-classifier cifar10 --data-dir)")
        images, labels, held, held_labels, trained_on = data
        classes, channels, width, flip = list(image_io.CIFAR10_CLASSES), 3, 64, True
        epochs = epochs or 15
    model = Classifier(channels, len(classes), width).to(device)
    batch_size = min(128, len(images))
    loader = image_io.DeviceLoader(images, labels, batch_size, device, seed=seed, flip=flip)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * len(loader)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    bar = training_bar(steps, f"{dataset} classifier", verbose)
    model.train()
    for step in range(steps):
        batch_images, batch_labels = loader.batch(step)
        # shift by up to 2 px: generated pictures are rarely as well centred as the training data
        dx, dy = torch.randint(-2, 3, (2,)).tolist()
        loss = F.cross_entropy(model(torch.roll(batch_images, (dy, dx), (2, 3))), batch_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.update(1)
    bar.close()
    accuracy = classifier_accuracy(model.eval(), held.to(device), held_labels.to(device))
    # the real images' variety, the reference for the samples' class_spread
    spread = class_spread(classifier_features(model, held.to(device)).cpu(), held_labels)
    # held-out images of the same kind as the training images
    ceiling_on = "embedded" if dataset == "letters" and data is None else "real"
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    checkpoints.save_checkpoint(out_path, {
        "format": checkpoints.CHECKPOINT_FORMAT, "script": f"{dataset}_classifier",
        "classes": classes, "channels": channels, "width": width,
        "model": {k: v.cpu() for k, v in model.state_dict().items()},
        "held_out_accuracy": accuracy, "trained_on": trained_on, "ceiling_on": ceiling_on,
        "class_spread": spread})
    return {"path": out_path, "held_out_accuracy": accuracy, "ceiling_on": ceiling_on,
            "trained_on": trained_on, "seconds": time.perf_counter() - start}


@torch.inference_mode()
def classifier_accuracy(model, images, labels, batch_size=500):
    channels = model.features[0].in_channels
    right = sum((model(to_classifier_input(x, channels)).argmax(1) == y).sum() for x, y in
                zip(images.split(batch_size), labels.split(batch_size)))
    return float(right) / len(images)


def class_spread(features, labels, per_class=500):
    """Within-class variety: the mean distance between two images of the same class in a
    classifier's feature space (its pooled last conv layer), averaged over the classes; at most
    `per_class` images of each class. A class drawn as one picture whatever the noise scores near 0;
    real images of a class score their spread."""
    spreads = []
    for c in labels.unique():
        f = features[labels == c][:per_class].double()
        if len(f) > 1:
            spreads.append(torch.cdist(f, f).sum() / (len(f) * (len(f) - 1)))
    return float(torch.stack(spreads).mean()) if spreads else None


@torch.inference_mode()
def classifier_features(model, images, batch_size=500):
    channels = model.features[0].in_channels
    return torch.cat([model.features(to_classifier_input(x, channels))
                      for x in images.split(batch_size)])


def load_classifier(dataset, path, device):
    """(model, checkpoint) of our letters/cifar10 classifier; a clear message when it has not been
    trained."""
    path = path or classifier_path(dataset)
    if not os.path.isfile(path):
        raise common.UserError(f"no {dataset} classifier at {path}: train it with "
                               f"`python evaluate.py --train-classifier {dataset}`")
    checkpoint = checkpoints.load_checkpoint(path, script=f"{dataset}_classifier",
                                             required=("model", "classes"))
    model = Classifier(checkpoint["channels"], len(checkpoint["classes"]), checkpoint["width"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint


# ---------------------------------------------------------------------------
# Objects: the multi-label object classifier
# A small multi-label CNN (or the lab's ResNet-18) says which of i-CLEVR's 24 objects a picture
# holds; the lab's score compares its top-k labels with the k objects asked for. cgan_objects.py
# scores its samples with it during training (what it draws, on which lists and noise, stays there).
# ---------------------------------------------------------------------------
OBJECTS_CLASSIFIER_SIZE = 64  # the lab's evaluator scores 64x64 images; 32x32 samples are upsampled
OBJECTS_COUNT = 24  # 8 colours x cube, sphere, cylinder


class ObjectClassifier(nn.Module):
    """64x64 picture in [-1, 1] -> 24 object logits. Strided convs with BN; features pooled over the
    whole picture (max: is the object anywhere?), so objects are found wherever they stand."""

    def __init__(self, width=32):
        super().__init__()
        w = width
        layers, channels = [], 3
        plan = ((w, 2), (2 * w, 2), (2 * w, 1), (4 * w, 2), (4 * w, 1), (8 * w, 2))
        for out_channels, stride in plan:
            layers += [nn.Conv2d(channels, out_channels, 3, stride, 1, bias=False),
                       nn.BatchNorm2d(out_channels), nn.ReLU(True)]
            channels = out_channels
        self.features = nn.Sequential(*layers)  # 64 -> 4x4
        self.head = nn.Linear(channels, OBJECTS_COUNT)

    def forward(self, images):
        return self.head(self.features(images).amax(dim=(2, 3)))


def iclevr_score(probabilities, conditions):
    """The lab's score: for each picture with k requested objects, count how many of the
    classifier's top-k labels were requested; return hits / requested labels (micro accuracy over
    the list)."""
    probabilities = torch.as_tensor(probabilities).float()
    conditions = torch.as_tensor(conditions).float()
    hits, total = 0, 0
    for scores, wanted in zip(probabilities, conditions):
        k = int(wanted.sum().item())
        hits += int(wanted[scores.topk(k).indices].sum().item())
        total += k
    return hits / total if total else 0.0


def objects_to_classifier_input(images):
    """Pictures in [-1, 1] at any size -> 64x64, as the lab's evaluator wants (32x32 upsampled
    bilinearly)."""
    images = images.float()
    if images.shape[-1] != OBJECTS_CLASSIFIER_SIZE:
        size = (OBJECTS_CLASSIFIER_SIZE, OBJECTS_CLASSIFIER_SIZE)
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    return images


def objects_load_classifier(path, device):
    """Our classifier file, or the lab's ResNet-18 checkpoint.pth ({'model': state_dict}, 24-way
    head)."""
    if not os.path.isfile(path):
        raise common.UserError(f"object classifier not found: {path} (train one: python "
                               f"evaluate.py --train-classifier objects, or pass the lab's "
                               f"checkpoint.pth with --classifier)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - anything that is not a plain tensor file
        raise common.UserError(f"cannot load classifier {path}: "
                               f"{common.first_line(e)[:200]}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise common.UserError(f"{path} is not an object classifier (expected a dict with key "
                               f"'model')")
    state = {str(k).removeprefix("module."): v for k, v in checkpoint["model"].items()}
    if checkpoint.get("script") == "object_classifier":
        model = ObjectClassifier(checkpoint.get("width", 32))
    else:  # the lab's evaluator: torchvision ResNet-18, fc = Sequential(Linear(512, 24), Sigmoid)
        import torchvision

        model = torchvision.models.resnet18(num_classes=OBJECTS_COUNT)
        # the sigmoid does not change the top k
        state = {k.replace("fc.0.", "fc."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as e:
        raise common.UserError(f"{path} does not fit {type(model).__name__}: "
                               f"{common.first_line(e)[:200]}") from None
    # ours: its scores on held-out real scenes (ceiling)
    model.held_out = checkpoint.get("held_out", {})
    return model.to(device).eval()


@torch.no_grad()
def objects_classify(classifier, images, batch_size=256):
    """Object scores (N, 24) for pictures in [-1, 1]; any monotone output (logits or probabilities).
    """
    device = next(classifier.parameters()).device
    return torch.cat([classifier(objects_to_classifier_input(chunk.to(device))).float().cpu()
                      for chunk in images.split(batch_size)])


@torch.no_grad()
def objects_score_lists(draw, classifier, lists, noise):
    """Score each condition list {name: multi-hot (n, 24)} with each noise draw (repeats, >= n, nz);
    draw(noise, conditions) -> pictures. Returns ({name: first-draw score}, {name: mean over the
    draws})."""
    first, mean = {}, {}
    device = next(classifier.parameters()).device
    for name, conditions in lists.items():
        scores = []
        for z in noise:
            fake = draw(z[:len(conditions)].to(device), conditions.to(device))
            scores.append(iclevr_score(objects_classify(classifier, fake), conditions))
        first[name], mean[name] = scores[0], sum(scores) / len(scores)
    return first, mean


def objects_classifier_ceiling(classifier, image_size):
    """The classifier's held-out score on real pictures of this size (what a perfect generator would
    get)."""
    held_out = getattr(classifier, "held_out", {})
    for name in (f"scenes at {image_size} px", f"scenes at {image_size} px, upsampled",
                 "held-out i-CLEVR pictures"):
        if name in held_out:
            return held_out[name]
    return None


def objects_score_generator(module, generator, settings, classifier_file=None, device="cpu",
                            test_dir=None, repeats=10):
    """The lab's two scores of a cgan_objects generator, drawn as its run drew them (the script
    `module`'s lists, fixed noise and sample(), handed in by the caller). Returns test, new_test
    (one fixed noise draw, the lab's protocol), test_mean, new_test_mean (means over `repeats`
    draws, steadier), classifier_ceiling, lists (where from), classifier."""
    device = torch.device(device)
    classifier_file = classifier_file or settings.get("classifier") or classifier_path("objects")
    classifier = objects_load_classifier(classifier_file, device)
    lists, source = module.find_condition_lists(test_dir or settings.get("test_dir"), settings)
    generator = generator.to(device)
    noise = module.scoring_noise(settings["nz"], repeats, settings.get("seed", 0))
    draw = lambda z, c: module.sample(generator, z, c)  # noqa: E731
    first, mean = objects_score_lists(draw, classifier, lists, noise)
    result = {**first, **{f"{k}_mean": v for k, v in mean.items()},
              "lists": source, "classifier": classifier_file, "repeats": repeats}
    ceiling = objects_classifier_ceiling(classifier, settings["image_size"])
    if ceiling is not None:  # measured on held-out real i-CLEVR pictures, or on embedded scenes
        result["classifier_ceiling"] = ceiling
        real = "held-out i-CLEVR pictures" in classifier.held_out
        result["ceiling_on"] = "real" if real else "embedded"
    return result


def objects_training_data(real, seed, n_scenes, n_held_out=2000):
    """(train images, train labels, held-out sets {name: (images, labels)}), uint8 64x64.

    `real`: (images, multi-hot labels, folder) of the real i-CLEVR pictures at 64 px as evaluate.py
    reads them, split 90/10. None: embedded scenes drawn at 64 px, plus the same scenes drawn at 32
    px and upsampled, because 32 px generators are scored through that upsampling."""
    if real is not None:
        images, labels, _ = real
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        cut = max(1, len(images) // 10)
        held, kept = order[:cut], order[cut:]
        held_out = {"held-out i-CLEVR pictures": (images[held], labels[held])}
        return images[kept], labels[kept], held_out
    import synthetic

    size = OBJECTS_CLASSIFIER_SIZE
    images64, labels = synthetic.scenes(n_scenes, size, seed=seed + 1000)
    images32, _ = synthetic.scenes(n_scenes, 32, seed=seed + 1000)
    held64, held_labels = synthetic.scenes(n_held_out, size, seed=seed + 2000)
    held32, _ = synthetic.scenes(n_held_out, 32, seed=seed + 2000)
    images = torch.cat([images64, image_io.to_uint8_images(images32, size, 3)])
    upsampled = image_io.to_uint8_images(held32, size, 3)
    held_out = {"scenes at 64 px": (held64, held_labels),
                "scenes at 32 px, upsampled": (upsampled, held_labels)}
    return images, torch.cat([labels, labels]), held_out


def objects_train_classifier(out_path=None, real=None, device="cpu", seed=0, epochs=5,
                             n_scenes=12000, n_held_out=2000, width=32, batch_size=128, log=print):
    """Train the object evaluator on embedded scenes (or the real i-CLEVR pictures `real`, see
    objects_training_data) and save it.

    Returns {'path', 'held_out': {set name: top-k score}, 'trained_on', 'seconds'}: the held-out
    scores are the ceiling a perfect generator would reach under this evaluator."""
    import synthetic

    start = time.perf_counter()
    out_path = out_path or classifier_path("objects")
    image_io.check_output_path(out_path, "classifier")
    device = torch.device(device)
    torch.manual_seed(seed)
    images, labels, held_out = objects_training_data(real, seed, n_scenes, n_held_out)
    model = ObjectClassifier(width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = image_io.DeviceLoader(images, labels, min(batch_size, len(images)), device, seed=seed,
                                   flip=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3,
                                                   total_steps=epochs * len(loader), pct_start=0.15)
    model.train()
    total = torch.zeros((), device=device)
    for step in range(epochs * len(loader)):
        batch_images, batch_labels = loader.batch(step)
        # small colour noise: the imperfect pictures of a generator are judged by shape and colour
        batch_images = batch_images + 0.03 * torch.randn_like(batch_images)
        loss = F.binary_cross_entropy_with_logits(model(batch_images), batch_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += loss.detach()
        if (step + 1) % len(loader) == 0:
            log(f"classifier epoch {(step + 1) // len(loader)}/{epochs}: loss "
                f"{total.item() / len(loader):.4f}")
            total.zero_()
    model.eval()
    scores = {}
    for name, (held_images, held_labels) in held_out.items():
        predicted = objects_classify(model, held_images.float() / 127.5 - 1)
        scores[name] = iclevr_score(predicted, held_labels)
        log(f"held-out {name}: {scores[name]:.4f} (top-k score, the ceiling for generated "
            f"pictures)")
    trained_on = f"i-CLEVR pictures in {real[2]}" if real is not None else \
        f"{n_scenes} synthetic scenes at 64 and 32 px"
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    # "objects": the 24 names in label order, which are i-CLEVR's objects.json order
    checkpoints.save_checkpoint(out_path, {
        "format": checkpoints.CHECKPOINT_FORMAT, "script": "object_classifier", "width": width,
        "model": model.cpu().state_dict(), "held_out": scores, "trained_on": trained_on,
        "objects": list(synthetic.SCENE_OBJECTS)})
    return {"path": out_path, "held_out": scores, "trained_on": trained_on,
            "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------
# Faces: hair/eye attribute classifier and the face count
# ---------------------------------------------------------------------------
class AttributeClassifier(nn.Module):
    """A small CNN with two heads for the anime faces: hair colour (12) and eye colour (11). Faces
    are judged at CLASSIFIER_SIZE (32 px): colours survive the downscale, and it is fast on a CPU.
    """

    def __init__(self, width=24, n_hair=12, n_eyes=11):
        super().__init__()

        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU(True)]

        self.features = nn.Sequential(*block(3, width), *block(width, width), nn.MaxPool2d(2),
                                      *block(width, 2 * width), *block(2 * width, 2 * width),
                                      nn.MaxPool2d(2), *block(2 * width, 4 * width),
                                      nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * width * 16, 128),
                                      nn.ReLU(True))
        self.hair_head = nn.Linear(128, n_hair)
        self.eye_head = nn.Linear(128, n_eyes)

    def forward(self, images):
        h = self.features(to_classifier_input(images, 3))
        return self.hair_head(h), self.eye_head(h)


def faces_augment(images, generator):
    """Flip, shift by up to 2 px, and add noise: the classifier must also read imperfect generated
    faces."""
    n = images.shape[0]
    flip = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
    images = torch.where(flip, images.flip(3), images)
    dx, dy = torch.randint(-2, 3, (2,), generator=generator).tolist()
    images = torch.roll(images, (dy, dx), (2, 3))
    noise_level = torch.rand(n, 1, 1, 1, generator=generator) * 0.12
    return images + noise_level * torch.randn(images.shape, generator=generator)


def faces_classifier_data(n, seed):
    """Embedded faces for the classifier: half drawn at 32 px, half at 64 px and shrunk (as
    generated 64 px faces are). -> (uint8 images, labels (n, 2) = [hair, eye])"""
    import synthetic

    half = n // 2
    small, hair_a, eyes_a = synthetic.faces(half, CLASSIFIER_SIZE, seed=seed)
    large, hair_b, eyes_b = synthetic.faces(n - half, 64, seed=seed + 1)
    large = image_io.to_uint8_images(large, CLASSIFIER_SIZE, 3)
    labels = torch.stack([torch.cat([hair_a, hair_b]), torch.cat([eyes_a, eyes_b])], 1)
    return torch.cat([small, large]), labels


@torch.no_grad()
def faces_accuracy(classifier, images, labels, batch_size=512, per_sample=False):
    """Hair, eye and both-right accuracy of the classifier on images (N, 3, H, W) with labels (N,
    2); per_sample: also whether each image had both right (N,) bool."""
    hair_right, eye_right = [], []
    classifier.eval()
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        hair_logits, eye_logits = classifier(x)
        hair_right.append(hair_logits.argmax(1) == y[:, 0])
        eye_right.append(eye_logits.argmax(1) == y[:, 1])
    hair_right, eye_right = torch.cat(hair_right), torch.cat(eye_right)
    scores = {"hair_acc": hair_right.float().mean().item(),
              "eye_acc": eye_right.float().mean().item(),
              "both_acc": (hair_right & eye_right).float().mean().item(), "n": len(images)}
    return (scores, (hair_right & eye_right).cpu()) if per_sample else scores


def faces_train_classifier(out_path=None, real=None, device="cpu", seed=0, n_faces=16000,
                           n_test=2640, epochs=5, verbose=True):
    """Train the hair/eye classifier on embedded faces, or on `real` = (images at 32 px, labels (N,
    2), folder): the MLDS faces as evaluate.py reads them, a tenth held out. Saves it to out_path
    and returns its held-out accuracy: the ceiling any generator's score can reach."""
    import synthetic

    start = time.perf_counter()
    out_path, device = out_path or classifier_path("faces"), torch.device(device)
    torch.manual_seed(seed)
    if real is None:
        images, labels = faces_classifier_data(n_faces, seed=seed + 7919)  # faces no generator saw
        test_images, test_labels = faces_classifier_data(n_test, seed=seed + 104729)
    else:
        images, labels, _ = real
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        held_out = max(1, len(images) // 10)  # a tenth of the real faces, never trained on
        test_images, test_labels = images[order[:held_out]], labels[order[:held_out]]
        images, labels = images[order[held_out:]], labels[order[held_out:]]
    n_hair, n_eyes = len(synthetic.HAIR_COLOURS), len(synthetic.EYE_COLOURS)
    classifier = AttributeClassifier(n_hair=n_hair, n_eyes=n_eyes).to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=2e-3)
    batch_size = 128
    steps = epochs * (len(images) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3,
                                                    total_steps=max(steps, 1))
    rng = torch.Generator().manual_seed(seed)
    bar = training_bar(steps, "faces classifier", verbose)
    for _ in range(epochs):
        classifier.train()
        order = torch.randperm(len(images), generator=rng)
        for b in range(len(images) // batch_size):
            index = order[b * batch_size:(b + 1) * batch_size]
            # [-1, 1], as samples are
            x = faces_augment(to_classifier_input(images[index], 3), rng).to(device)
            y = labels[index].to(device)
            hair_logits, eye_logits = classifier(x)
            loss = F.cross_entropy(hair_logits, y[:, 0]) + F.cross_entropy(eye_logits, y[:, 1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.update(1)
    bar.close()
    ceiling, both_right = faces_accuracy(classifier, to_classifier_input(test_images, 3).to(device),
                                         test_labels.to(device), per_sample=True)
    ceiling["seconds"] = time.perf_counter() - start
    # Faces per tag pair (which pairs the data can judge) and held-out both-right per pair (the
    # ceiling of any subset of pairs, e.g. the course's five): flat hair * n_eyes + eye tables of
    # plain ints.
    held_pairs = test_labels[:, 0] * n_eyes + test_labels[:, 1]
    n_pairs = n_hair * n_eyes
    pair_tables = {"held_out_pair_counts": torch.bincount(held_pairs, minlength=n_pairs),
                   "held_out_pair_right": torch.bincount(held_pairs[both_right], minlength=n_pairs)}
    if real is not None:  # real tags: how many faces each pair has
        all_labels = torch.cat([labels, test_labels])
        pair_tables["pair_counts"] = torch.bincount(all_labels[:, 0] * n_eyes + all_labels[:, 1],
                                                    minlength=n_pairs)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    checkpoints.save_checkpoint(out_path, {
        "format": checkpoints.CHECKPOINT_FORMAT, "script": "faces_classifier",
        "data": "synthetic" if real is None else os.path.abspath(real[2]),
        "hair_colours": list(synthetic.HAIR_COLOURS), "eye_colours": list(synthetic.EYE_COLOURS),
        "image_size": CLASSIFIER_SIZE, "model": classifier.state_dict(), "ceiling": ceiling,
        **{k: v.tolist() for k, v in pair_tables.items()}})
    if verbose:
        print(f"classifier saved to {out_path}: held-out hair {ceiling['hair_acc']:.3f}, eyes "
              f"{ceiling['eye_acc']:.3f}, both {ceiling['both_acc']:.3f} "
              f"({ceiling['seconds']:.0f} s)", file=sys.stderr)
    return {**ceiling, "path": out_path}


def faces_load_classifier(path, device):
    """(classifier, checkpoint) of the faces attribute classifier; one clear line when it is missing
    or foreign."""
    path = path or classifier_path("faces")
    if not os.path.isfile(path):
        raise common.UserError(f"no attribute classifier at {path}: train one with "
                               f"`python evaluate.py --train-classifier faces`")
    checkpoint = checkpoints.load_checkpoint(path, map_location=device, required=())
    if checkpoint["script"] != "faces_classifier":
        raise common.UserError(f"{path} is not a faces attribute classifier (it was written by "
                               f"{checkpoint['script']})")
    colours = [checkpoint.get(key) for key in ("hair_colours", "eye_colours")]
    if not all(isinstance(c, list) for c in colours):
        raise common.UserError(f"{path} is damaged: it has no colour lists")
    classifier = AttributeClassifier(n_hair=len(colours[0]), n_eyes=len(colours[1])).to(device)
    checkpoints.load_weights(classifier, checkpoint.get("model"), path)
    return classifier.eval(), checkpoint


def faces_score(sample_fn, noise_shape, classifier, device, n_per_pair=16, seed=0, per_pair=False):
    """Hair, eye and both-right accuracy of the classifier on generated faces, balanced over all
    hair x eye pairs (n_per_pair each). sample_fn(noise, labels) -> images in [-1, 1]. per_pair:
    also the both-right rate of each pair, flat (hair * n_eyes + eye)."""
    n_hair, n_eyes = classifier.hair_head.out_features, classifier.eye_head.out_features
    pairs = torch.tensor([(h, e) for h in range(n_hair) for e in range(n_eyes)], dtype=torch.int64)
    # every batch mixes all pairs (matters where BN uses batch stats)
    labels = pairs.repeat(n_per_pair, 1)
    noise = torch.randn(len(labels), *noise_shape, generator=torch.Generator().manual_seed(seed))
    chunk = 2 * len(pairs)
    images = torch.cat([sample_fn(noise[i:i + chunk].to(device), labels[i:i + chunk].to(device))
                        .float() for i in range(0, len(labels), chunk)])
    scores, both_right = faces_accuracy(classifier, images, labels.to(device), per_sample=True)
    if not per_pair:
        return scores
    # labels cycle through the pairs
    return scores, both_right.view(n_per_pair, len(pairs)).double().mean(0)


FACES_COMMON_PAIR = 100  # tag pairs with at least this many real faces are scored as a group


def faces_checkpoint_scores(loaded, classifier_file, device, n_per_pair=32):
    """The attribute scores of a cdcgan_anime checkpoint (a row of evaluate.py's table); `loaded` is
    evaluate.py's LoadedCheckpoint (sample, noise_shape, args and the script module)."""
    if loaded.args.get("unconditional"):
        raise common.UserError("an unconditional generator draws no requested colours: nothing to "
                               "score")
    classifier, checkpoint = faces_load_classifier(classifier_file, device)
    scores, pair_both = faces_score(loaded.sample, loaded.noise_shape, classifier, device,
                                    n_per_pair=n_per_pair, per_pair=True)
    scores["faces_judged"] = scores.pop("n")  # a row's "n" is the number of images its FID saw
    n_eyes = classifier.eye_head.out_features
    report_pairs = map(loaded.module.parse_tag_text, getattr(loaded.module, "REPORT_PAIRS", []))
    subsets = {"report_pairs": [hair * n_eyes + eye for hair, eye in report_pairs]}
    counts = checkpoint.get("pair_counts")
    if isinstance(counts, list) and len(counts) == len(pair_both):  # a judge trained on real faces
        common_pairs = [i for i, n in enumerate(counts) if n >= FACES_COMMON_PAIR]
        subsets[f"pairs_{FACES_COMMON_PAIR}"] = common_pairs
    ceiling = checkpoint.get("ceiling")
    if isinstance(ceiling, dict) and isinstance(ceiling.get("both_acc"), float):
        scores["ceiling_both"] = ceiling["both_acc"]
    held_counts = checkpoint.get("held_out_pair_counts")
    held_right = checkpoint.get("held_out_pair_right")
    has_pair_ceilings = all(isinstance(t, list) and len(t) == len(pair_both)
                            for t in (held_counts, held_right))
    for name, pairs in subsets.items():
        if not pairs:
            continue
        scores[f"both_acc_{name}"] = pair_both[pairs].mean().item()
        if has_pair_ceilings:
            held = sum(held_counts[i] for i in pairs)
            if held:  # the judge's own both-right on held-out real faces of these pairs
                scores[f"ceiling_both_{name}"] = sum(held_right[i] for i in pairs) / held
    return scores


def faces_count(sheet_path_or_images, cascade_path):
    """The MLDS grading check: faces OpenCV's lbpcascade_animeface finds on the 5x5 sheet (pass: >=
    20 of 25). Grey, histogram-equalised, detectMultiScale(scaleFactor=1.1, minNeighbors=5,
    minSize=(24, 24)). Takes a PNG path, or images (N, 3, H, W) in [-1, 1], laid out 5 per row and
    enlarged as cgan.png is."""
    try:
        import cv2
    except ImportError:
        raise common.UserError('the face count needs OpenCV: pip install '
                               '"opencv-python-headless<5"') from None
    # OpenCV 5 moved the cascade detector out of the package
    if not hasattr(cv2, "CascadeClassifier"):
        raise common.UserError(f'OpenCV {cv2.__version__} has no CascadeClassifier: pip install '
                               f'"opencv-python-headless<5"')
    if not os.path.isfile(cascade_path):
        raise common.UserError(f"cascade file not found: {cascade_path} (get "
                               f"lbpcascade_animeface.xml from "
                               f"https://github.com/nagadomi/lbpcascade_animeface)")
    cascade = cv2.CascadeClassifier(cascade_path)
    if cascade.empty():
        raise common.UserError(f"{cascade_path} is not an OpenCV cascade file")
    if isinstance(sheet_path_or_images, (str, os.PathLike)):
        grey = np.asarray(image_io.read_image(str(sheet_path_or_images), "L"))
    else:
        images = image_io.to_image_uint8(sheet_path_or_images)
        # image_io.save_grid enlarges small faces (nearest) to about 128 px
        if images.shape[-1] < 64:
            images = F.interpolate(images, scale_factor=128 // images.shape[-1], mode="nearest")
        grey = cv2.cvtColor(image_io.image_grid(images, 5, padding=0), cv2.COLOR_RGB2GRAY)
    found = cascade.detectMultiScale(cv2.equalizeHist(grey), scaleFactor=1.1, minNeighbors=5,
                                     minSize=(24, 24))
    return len(found)
