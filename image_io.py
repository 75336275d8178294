"""Images in and out for the gan-scripts: reading image files, folders, CIFAR-10's batches and
EMNIST's letters into uint8 tensors; writing sample grids, one PNG per sample, GIFs and plots. Small
helpers, no training policy."""

import math
import os
import pickle

import numpy as np
import torch
import torch.nn.functional as F

from common import UserError, first_line, uses_channels_last

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# far above any GAN training image; bigger is refused (decompression bombs)
MAX_IMAGE_PIXELS = 4096 * 4096


# ---------------------------------------------------------------------------
# Reading: files, folders, CIFAR-10, EMNIST's letters
# ---------------------------------------------------------------------------
def list_image_files(root, extensions=IMAGE_EXTENSIONS):
    """Every image file under `root` (recursive, symlinks followed), each file once, sorted. A
    folder reached twice (a symlink loop, two links to one folder) is read once, not forever."""
    if not os.path.isdir(root):
        raise UserError(f"image folder not found: {root}")
    by_target, seen_folders = {}, set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_folders:
            subfolders[:] = []
            continue
        seen_folders.add(real)
        subfolders.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            if name.lower().endswith(extensions) and os.path.isfile(path):
                by_target.setdefault(os.path.realpath(path), path)
    if not by_target:
        raise UserError(f"no images ({', '.join(extensions)}) found under {root}")
    return sorted(by_target.values())


def read_image(path, mode="RGB"):
    """Decode an image file to a PIL image in `mode` ("RGB" or "L"). 16-bit and float images are
    scaled to 8 bits (PIL's convert() clips them: a 16-bit PNG would load as white); huge images are
    refused."""
    from PIL import Image

    try:
        with Image.open(path) as im:  # reads the header only: the size is known before any pixel
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise UserError(f"cannot read image {path}: {im.width}x{im.height} pixels is too "
                                f"large (more than {MAX_IMAGE_PIXELS:,}; a decompression bomb?)")
            if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
                values = np.asarray(im, dtype=np.float64)
                if im.mode == "F":
                    top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
                else:
                    sixteen = im.mode.startswith("I;16") or values.max(initial=0) > 255
                    top = 65535.0 if sixteen else 255.0
                eight_bits = np.clip(values / top * 255 + 0.5, 0, 255).astype(np.uint8)
                im = Image.fromarray(eight_bits, "L")
            return im.convert(mode)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for broken files
        raise UserError(f"cannot read image {path}: {first_line(e)}") from None


def load_image_folder(root, image_size):
    """Every image under `root`, centre-cropped to a square and resized once: uint8 (N, 3, S, S). An
    image under a first-level subfolder gets that subfolder's name as its class (ImageFolder's
    layout).
    Returns (images, labels, class names); a flat folder is one class named ""."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image, ImageOps

    paths = list_image_files(root)

    def decode(path):
        return np.asarray(ImageOps.fit(read_image(path, "RGB"), (image_size, image_size),
                                       Image.BICUBIC))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL frees the GIL
        arrays = list(pool.map(decode, paths))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    folders = [os.path.relpath(p, root).split(os.sep)[0] if os.sep in os.path.relpath(p, root)
               else ""
               for p in paths]
    class_names = sorted(set(folders))
    labels = torch.tensor([class_names.index(f) for f in folders], dtype=torch.int64)
    return images, labels, class_names


def to_uint8_images(images, image_size, channels):
    """A uint8 (N, C, H, W) tensor at `channels` (1 or 3) and `image_size`, converted once: luma as
    PIL's convert("L"), area averaging to shrink, bilinear to enlarge."""
    if images.shape[1] == 3 and channels == 1:  # ITU-R 601 luma
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        images = (images.float() * luma).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    elif images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    elif images.shape[1] != channels:
        images = images[:, :channels].contiguous()
    if images.shape[-2:] != (image_size, image_size):
        resized = torch.empty((len(images), images.shape[1], image_size, image_size),
                              dtype=torch.uint8)
        for i in range(0, len(images), 1024):  # in chunks: one float copy at a time, not of all
            resized[i:i + 1024] = resize_pixels(images[i:i + 1024].float(), image_size)
        images = resized
    return images


def resize_pixels(pixels, image_size):
    """Float pixel values (N, C, H, W) in [0, 255] at `image_size`: area averaging to shrink,
    bilinear to enlarge, rounded to whole values (the same numbers as a uint8 image resized
    once)."""
    shrink = pixels.shape[-1] > image_size
    mode, corners = ("area", None) if shrink else ("bilinear", False)
    resized = F.interpolate(pixels, size=(image_size, image_size), mode=mode, align_corners=corners)
    return resized.round_().clamp_(0, 255)


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
CIFAR10_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"  # the "CIFAR-10 python version" link on that page
CIFAR10_FOLDER = "cifar-10-batches-py"  # what the tarball unpacks to
CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class _CifarUnpickler(pickle.Unpickler):
    """The batches are pickles: only the numpy pieces they are made of are allowed, so a tampered
    file cannot run code (the idea of torch.load(weights_only=True))."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the file")
        return super().find_class(module, name)


def read_cifar_batch(path):
    """One batch file: a pickled dict with 'data' (N x 3072 uint8, RGB planes) and 'labels'."""
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()  # latin1: written by Python 2
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry["labels"], dtype=np.int64)
        if len(labels) != len(data) or labels.min() < 0 or labels.max() > 9:
            raise ValueError("labels do not match the images")
    except Exception as e:  # noqa: BLE001 - truncated, foreign or tampered: fetch it again
        raise UserError(f"{path} is not a readable CIFAR-10 batch ({first_line(e)}): delete "
                        f"{os.path.dirname(path)} and unpack {CIFAR10_TARBALL} again") from None
    return torch.from_numpy(np.ascontiguousarray(data)), torch.from_numpy(labels)


def fetch_cifar10(data_dir):
    """Download and unpack the tarball with torchvision (no download when data_dir holds it with the
    right MD5); one clear message when that is impossible."""
    import socket

    from torchvision.datasets import CIFAR10

    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # an offline machine behind a firewall fails instead of hanging
    try:
        CIFAR10(data_dir, train=True, download=True)
    except Exception as e:  # noqa: BLE001 - offline: URLError, socket errors, HTTP errors, MD5...
        tarball = os.path.join(data_dir, CIFAR10_TARBALL)
        found = f"{tarball} is there but incomplete or corrupt; " if os.path.exists(tarball) else ""
        raise UserError(
            f"CIFAR-10 is not in {data_dir} and could not be downloaded ({type(e).__name__}): "
            f"{found}fetch {CIFAR10_TARBALL} from {CIFAR10_PAGE} and put it in {data_dir}/ (or "
            f"unpack it there, giving {os.path.join(data_dir, CIFAR10_FOLDER)}/), or use --data "
            f"synthetic") from None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def load_cifar10(data_dir, split="train"):
    """The 50,000 training (or 10,000 test) images as uint8 (N, 3, 32, 32) and their labels. Read
    here, not by torchvision's CIFAR10 class, which insists on the official MD5 of every file (a
    test's small fake set would be refused) and unpickles without restriction; torchvision
    downloads."""
    paths = [os.path.join(data_dir, CIFAR10_FOLDER, name) for name in CIFAR10_BATCHES[split]]
    if not all(os.path.isfile(p) for p in paths):
        fetch_cifar10(data_dir)
    batches = [read_cifar_batch(p) for p in paths]
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


# EMNIST-Balanced (Cohen et al. 2017), label -> character: the lower-case letters that look like
# their capitals (c i j k l m o p s u v w x y z) are merged into the capital's class.
EMNIST_BALANCED = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt"


def emnist_labels(chars):
    """The EMNIST-Balanced label of each character; one clear error for a merged lower-case one."""
    missing = [c for c in chars if len(c) != 1 or c not in EMNIST_BALANCED]
    if missing:
        raise UserError(f"EMNIST-Balanced has no class for {' '.join(missing)}: it merges the "
                        f"lower-case letters other than a b d e f g h n q r t with their capitals "
                        f"(use the capital, or --data synthetic)")
    return [EMNIST_BALANCED.index(c) for c in chars]


def upright_letters(stored, image_size, transpose=True):
    """uint8 (N, 1, H, W) as EMNIST stores them (transposed) -> upright uint8 (N, 1, S, S)."""
    letters = stored.transpose(2, 3) if transpose else stored
    return to_uint8_images(letters.contiguous(), image_size, 1)


def load_emnist(data_dir, chars, image_size=32, transpose=True, split="balanced"):
    """torchvision's EMNIST training set (downloaded to data_dir/EMNIST): the images of each
    character as uint8 (N, 1, S, S), upright unless transpose=False; one clear message offline."""
    import torchvision

    labels = emnist_labels(chars)  # before any download
    try:
        dataset = torchvision.datasets.EMNIST(data_dir, split=split, train=True, download=True)
    except Exception as e:  # noqa: BLE001 - offline: URLError, HTTPError, RuntimeError...
        raise UserError(f"EMNIST is not in {data_dir}/EMNIST and could not be downloaded "
                        f"({type(e).__name__}): unpack gzip.zip of the NIST EMNIST page to "
                        f"{data_dir}/EMNIST/raw/") from None
    stored = dataset.data.unsqueeze(1)  # uint8 (N, 1, 28, 28)
    return [upright_letters(stored[dataset.targets == label], image_size, transpose)
            for label in labels]


def stack_classes(per_class, labels=None):
    """A uint8 tensor per class -> (all the images, their int64 labels: labels[i], default i)."""
    per_class = list(per_class)
    labels = range(len(per_class)) if labels is None else list(labels)
    return torch.cat(per_class), torch.cat([torch.full((len(x),), int(y), dtype=torch.int64)
                                            for x, y in zip(per_class, labels)])


def load_letter_folders(data_dir, folders=None, image_size=32, transpose=True):
    """The course's letters: <data_dir>[/Train]/<EMNIST-Balanced label>/*.jpeg, 28x28 PNG data under
    a .jpeg name, stored transposed as EMNIST's. Returns ({folder: uint8 (N, 1, S, S)}, the folder
    read), upright unless transpose=False; folders None: every label folder there (0-46)."""
    train = os.path.join(data_dir, "Train")
    root = train if os.path.isdir(train) else data_dir
    if folders is None:
        found = os.listdir(root) if os.path.isdir(root) else []
        folders = sorted(d for d in found if d.isdigit() and int(d) < 47)
        if not folders:
            raise UserError(f"no class folders <EMNIST-Balanced label>/ (0-46, e.g. 10 for A) in "
                            f"{data_dir}")
    if not os.path.isdir(root):
        raise UserError(f"data folder not found: {data_dir} (Train/<label>/*.jpeg)")
    letters = {}
    for folder in map(str, folders):
        path = os.path.join(root, folder)
        if not os.path.isdir(path):
            present = " ".join(sorted(next(os.walk(root))[1], key=lambda d: (len(d), d))) or "none"
            known = folder.isdigit() and int(folder) < len(EMNIST_BALANCED)
            char = f" for {EMNIST_BALANCED[int(folder)]!r}" if known else ""
            raise UserError(f"class folder {path}{char} does not exist (present: {present})")
        try:
            files = list_image_files(path)
        except UserError:
            raise UserError(f"class folder {path} holds no .jpeg/.jpg/.png images") from None
        stored = np.stack([np.asarray(read_image(f, "L").resize((28, 28))) for f in files])
        letters[folder] = upright_letters(torch.from_numpy(stored)[:, None], image_size, transpose)
    return letters, root


class DeviceLoader:
    """Batches drawn by index from a uint8 tensor that lives on the training device.

    No DataLoader workers and no PIL in the loop: a batch is an index_select plus a float conversion
    on the device. `batch(step)` depends only on (seed, step): an epoch's shuffle comes from (seed,
    epoch), so a run resumed at any step sees exactly the batches it would have seen. Under DDP
    every rank takes a disjoint slice of the same permutation. Images stored at another size than
    `image_size` (CIFAR-10's 32 px for a 64 px run) are resized batch by batch, to the values
    to_uint8_images would store: a quarter of the memory, and no resize of the whole set at
    start."""

    def __init__(self, images, labels=None, batch_size=64, device="cpu", seed=0, flip=False,
                 rank=0, world_size=1, normalize=True, image_size=None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("DeviceLoader expects a uint8 tensor of shape (N, C, H, W)")
        if len(images) // world_size < batch_size:
            raise UserError(f"the dataset has {len(images)} images: fewer than one batch of "
                            f"{batch_size} "
                            f"per process; lower --batch-size")
        self.images = images.to(device)
        self.labels = None if labels is None else labels.to(device)
        self.batch_size, self.device = batch_size, torch.device(device)
        self.seed, self.flip = seed, flip
        self.rank, self.world_size, self.normalize = rank, world_size, normalize
        self.image_size = image_size or images.shape[-1]
        self.steps_per_epoch = len(images) // world_size // batch_size  # drop_last: fixed shapes
        self._order_epoch, self._order = None, None

    def __len__(self):
        return self.steps_per_epoch

    def batch(self, step):
        """(images in [-1, 1] as float, labels or None) of training step `step`."""
        epoch, index_in_epoch = divmod(step, self.steps_per_epoch)
        if epoch != self._order_epoch:
            shuffle = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            order = torch.randperm(len(self.images), generator=shuffle)
            self._order = order[self.rank::self.world_size].to(self.device)
            self._order_epoch = epoch
        index = self._order[index_in_epoch * self.batch_size:(index_in_epoch + 1) * self.batch_size]
        labels = None if self.labels is None else self.labels.index_select(0, index)
        return self.to_float(self.images.index_select(0, index), flip=self.flip), labels

    def to_float(self, images, flip=False):
        images = images.float()
        if images.shape[-1] != self.image_size:  # the values to_uint8_images would have stored
            images = resize_pixels(images, self.image_size)
        images = images.div_(255)
        if self.normalize:
            images = images.mul_(2).sub_(1)  # [-1, 1] to match the generator's tanh
        if flip:
            mask = torch.rand(images.shape[0], 1, 1, 1, device=images.device) < 0.5
            images = torch.where(mask, images.flip(3), images)
        if uses_channels_last(self.device):
            images = images.contiguous(memory_format=torch.channels_last)
        return images


# ---------------------------------------------------------------------------
# Writing: checked output paths, grids, PNGs, GIFs, plots (atomically: a tmp file, then a rename)
# ---------------------------------------------------------------------------
OUTPUT_KINDS = {  # what an output flag writes: the file name's endings, and how such a file begins
    "png": ((".png",), (b"\x89PNG",)), "gif": ((".gif",), (b"GIF8",)), "csv": ((".csv",), ()),
    "checkpoint": ((".pt", ".pth"), (b"PK", b"\x80")), "npz": ((".npz",), (b"PK",))}


def check_output_path(path, what="output", kind=None):
    """Refuse an output path before any work: not a regular file or a new one (a device, a folder, a
    symlink), a folder that cannot be written, or, with `kind`, a name without the kind's ending or
    an
    existing file that is not of that kind (a --grid-out that names a checkpoint never replaces
    it)."""
    if os.path.islink(path) or (os.path.exists(path) and not os.path.isfile(path)):
        raise UserError(f"{what} {path} exists and is not a regular file: pass a new file name")
    if kind is not None:
        endings, magics = OUTPUT_KINDS[kind]
        if not path.lower().endswith(endings):
            raise UserError(f"{what} {path}: the file name must end in {' or '.join(endings)}")
        head = open(path, "rb").read(8) if os.path.exists(path) else b""
        text = all(32 <= b < 127 or b in (9, 10, 13) for b in head)
        if head and ((magics and not head.startswith(magics)) or (not magics and not text)):
            raise UserError(f"{what} {path} exists and is not a {kind} file: it is left as it is; "
                            f"pass a new file name")
    existing = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"cannot write {what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise UserError(f"cannot write {what} {path}: {existing} is not writable")
    return path


def check_empty_folder(folder, what):
    """A folder of one file per sample must be new or empty: mixed with another model's samples, it
    would be scored as a mix by evaluate.py folder:PATH."""
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise UserError(f"{what} {folder} exists and is not empty: pass a new or empty folder")
    return folder


def to_image_uint8(images, normalized=True):
    """(N, C, H, W) float in [-1, 1] (or [0, 1]) -> uint8 on the CPU."""
    images = images.detach().float().cpu()
    if normalized:
        images = (images + 1) / 2
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def image_grid(images, nrow, padding=2, pad_value=255):
    """uint8 (N, C, H, W) -> uint8 (H', W', 3) grid, rows of `nrow` images."""
    n, c, h, w = images.shape
    if c == 1:
        images = images.expand(-1, 3, -1, -1)
    rows = math.ceil(n / nrow)
    grid = torch.full((3, rows * (h + padding) + padding, nrow * (w + padding) + padding),
                      pad_value,
                      dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, y:y + h, x:x + w] = images[i, :3]
    return grid.permute(1, 2, 0).numpy()


def save_grid(images, path, nrow=8, row_labels=None, normalized=True, scale=None, title=None,
              captions=None):
    """Save a sample grid as PNG. `row_labels`: a name left of each row (class-conditional grids);
    `title`: a line above the grid (the epoch); `captions`: a text under each picture (its
    condition)."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(image_grid(to_image_uint8(images, normalized), nrow))
    h = images.shape[-1]
    scale = scale or max(1, 128 // h) if h < 64 else (scale or 1)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    cell = picture.width / nrow
    if captions:  # a strip of text under every row of pictures
        rows = math.ceil(len(images) / nrow)
        strip = 11 * max(len(str(c).split("\n")) for c in captions) + 2
        tile = picture.height / rows
        canvas = Image.new("RGB", (picture.width, picture.height + rows * strip), "white")
        draw = ImageDraw.Draw(canvas)
        for r in range(rows):
            canvas.paste(picture.crop((0, round(r * tile), picture.width, round((r + 1) * tile))),
                         (0, round(r * (tile + strip))))
        for i, caption in enumerate(captions[:len(images)]):
            r, c = divmod(i, nrow)
            draw.multiline_text((c * cell + 3, round((r + 1) * tile + r * strip)), str(caption),
                                fill="black", spacing=1)
        picture = canvas
    if row_labels:
        margin = 8 + 7 * max(len(str(s)) for s in row_labels)
        canvas = Image.new("RGB", (picture.width + margin, picture.height), "white")
        canvas.paste(picture, (margin, 0))
        draw = ImageDraw.Draw(canvas)
        row_height = picture.height / math.ceil(len(images) / nrow)
        for r, label in enumerate(row_labels):
            draw.text((4, int(r * row_height + row_height / 2 - 5)), str(label), fill="black")
        picture = canvas
    if title:
        canvas = Image.new("RGB", (picture.width, picture.height + 16), "white")
        canvas.paste(picture, (0, 16))
        ImageDraw.Draw(canvas).text((4, 2), str(title), fill="black")
        picture = canvas
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    picture.save(f"{path}.tmp.png")
    os.replace(f"{path}.tmp.png", path)
    return path


def save_pngs(images, folder, normalized=True):
    """One PNG per image (000000.png, ...): the layout FID tools and evaluate.py folder: read."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    pixels = to_image_uint8(images, normalized).permute(0, 2, 3, 1).numpy()
    for i, array in enumerate(pixels):
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(
            os.path.join(folder, f"{i:06d}.png"))
    return folder


def interpolation_noise(rows, steps, nz, seed):
    """Noise for a latent interpolation sheet: each of `rows` rows walks in `steps` steps from one
    random noise vector to another along the great circle (slerp: every point has the norm of
    Gaussian noise)."""
    generator = torch.Generator().manual_seed(seed)
    start, end = torch.randn(rows, nz, generator=generator), torch.randn(rows, nz,
                                                                         generator=generator)
    cosine = (F.normalize(start, dim=1) * F.normalize(end, dim=1)).sum(1).clamp(-1, 1)
    angle = torch.acos(cosine).view(rows, 1, 1)
    t = torch.linspace(0, 1, steps).view(1, steps, 1)
    start, end = start.unsqueeze(1), end.unsqueeze(1)
    noise = (torch.sin((1 - t) * angle) * start
             + torch.sin(t * angle) * end) / torch.sin(angle).clamp_min(1e-6)
    return noise.reshape(rows * steps, nz, 1, 1)


def save_gif(frame_paths, path, duration_ms=400):
    """Animate the sample grids written so far (one frame per saved epoch)."""
    from PIL import Image

    frames = [Image.open(p).convert("RGB") for p in frame_paths if os.path.exists(p)]
    if not frames:
        return None
    frames[0].save(f"{path}.tmp.gif", save_all=True, append_images=frames[1:], duration=duration_ms,
                   loop=0)
    os.replace(f"{path}.tmp.gif", path)
    return path


def save_figure(fig, path):
    """Write a matplotlib figure as PNG atomically and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(f"{path}.tmp.png", dpi=110)
    plt.close(fig)
    os.replace(f"{path}.tmp.png", path)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(series, path, title="losses", xlabel="step", ylabel="loss"):
    """series: {name: (xs, ys)} -> one PNG with a curve each."""
    fig, ax = _pyplot().subplots(figsize=(7, 4))
    for name, (xs, ys) in series.items():
        if len(xs):
            ax.plot(xs, ys, label=name, linewidth=1.2, marker="o" if len(xs) <= 30 else None,
                    markersize=3)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    return save_figure(fig, path)


def plot_losses(history, path, title="losses"):
    """Every series of a TrainLog history against step: the losses in one panel, the rest (D
    outputs, accuracies) in a second, whatever train_step returned."""
    keys = [k for k in history if k not in ("step", "scores") and len(history[k])
            == len(history["step"])]
    panels = [p
              for p in ([k for k in keys if k.startswith("loss")],
                        [k for k in keys if not k.startswith("loss")])
              if p]
    if not panels:
        return None
    fig, axes = _pyplot().subplots(len(panels), 1, figsize=(7, 3 + 2 * len(panels)), sharex=True,
                                   squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        for k in panel:
            ax.plot(history["step"], history[k], label=k, linewidth=1.2)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("step")
    return save_figure(fig, path)
