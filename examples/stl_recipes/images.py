"""Offline image data for the recipes: IDX files (Fashion-MNIST / MNIST) kept as one tensor on the
training device, and an ImageFolder tree (e.g. ImageNet) read with PIL through ``ImageTransform``
(the training augmentations of ``augment`` plug in there). Nothing is downloaded."""
import glob
import gzip
import os
import random
import struct

import numpy as np
import torch

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian: dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


# ----------------------------------------------------------------------------- IDX
def read_idx(path):
    """Parses an IDX file (optionally .gz): big-endian magic 0x0000 0803 (uint8, 3 dims) etc."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {dims} values, found {arr.size}")
    return arr.reshape(dims)


def write_idx(path, arr):
    """Writes a uint8 array as (gzipped if .gz) IDX; used by tests to make tiny fixtures."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + arr.tobytes())


def _find(root, stem):
    for cand in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        p = os.path.join(root, cand)
        if os.path.exists(p):
            return p
    return None


def is_idx_dir(root):
    return _find(root, IDX_FILES["train"][0]) is not None


def load_idx_split(root, split):
    """(images uint8 (N, H, W), labels int64 (N,)) of split 'train' or 'test'."""
    img_stem, lab_stem = IDX_FILES[split]
    ip, lp = _find(root, img_stem), _find(root, lab_stem)
    if ip is None or lp is None:
        raise FileNotFoundError(
            f"no IDX files for split {split!r} in {root}. For Fashion-MNIST install the Debian "
            f"package: apt-get install -y dataset-fashion-mnist")
    x, y = read_idx(ip), read_idx(lp)
    if len(x) != len(y):
        raise ValueError(f"{root}/{split}: {len(x)} images but {len(y)} labels")
    return torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))


class TensorImages:
    """A whole small dataset as one uint8 tensor kept on the training device; batches are cut
    by index, normalised, resized and augmented on the device (no DataLoader workers needed)."""

    def __init__(self, images, labels, num_classes, mean, std):
        self.images, self.labels = images, labels  # (N, C, H, W) uint8, (N,)
        self.num_classes, self.mean, self.std = num_classes, mean, std

    def __len__(self):
        return len(self.labels)

    def to(self, device):
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return self


def gpu_batch(ds: TensorImages, idx, img_size, train, gen=None, crop_pad=2, flip=True):
    """Index -> normalised float batch, with random crop (pad + random offset) and horizontal flip
    when training. ``gen`` makes the augmentation a pure function of (seed, epoch, rank)."""
    x = ds.images[idx].float().div_(255)
    y = ds.labels[idx]
    if x.shape[-1] != img_size:
        x = torch.nn.functional.interpolate(x, size=(img_size, img_size), mode="bilinear",
                                            align_corners=False, antialias=True)
    if train:
        b, c, h, w = x.shape
        p = max(1, round(crop_pad * img_size / 28)) if crop_pad else 0
        if p:
            xp = torch.nn.functional.pad(x, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (b,), generator=gen, device="cpu").to(x.device)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=gen, device="cpu").to(x.device)
            ar = torch.arange(h, device=x.device)
            rows = (oy[:, None] + ar[None]).view(b, 1, h, 1).expand(b, c, h, w + 2 * p)
            x = xp.gather(2, rows)
            cols = (ox[:, None] + torch.arange(w, device=x.device)[None]).view(b, 1, 1, w)
            x = x.gather(3, cols.expand(b, c, h, w))
        if flip:
            f = torch.rand(b, generator=gen, device="cpu").to(x.device) < 0.5
            x = torch.where(f.view(b, 1, 1, 1), x.flip(-1), x)
    mean = torch.tensor(ds.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std, y


def load_idx_dataset(root, train_subset=None, test_subset=None, seed=0):
    """Fashion-MNIST-style IDX dir -> (train, test) TensorImages (1 channel)."""
    out = []
    for split, sub in (("train", train_subset), ("test", test_subset)):
        x, y = load_idx_split(root, split)
        if sub and sub < len(y):
            g = torch.Generator().manual_seed(seed + (split == "test"))
            keep = torch.randperm(len(y), generator=g)[:sub]
            x, y = x[keep], y[keep]
        # Fashion-MNIST train-set statistics; close enough for MNIST-like data too
        out.append(TensorImages(x[:, None], y, int(y.max()) + 1 if split == "train" else None,
                                mean=(0.2860,), std=(0.3530,)))
    out[1].num_classes = max(out[0].num_classes, int(out[1].labels.max()) + 1)
    out[0].num_classes = out[1].num_classes
    return out


# ----------------------------------------------------------------------------- ImageFolder
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMG_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG", ".JPG", ".PNG")


def is_imagefolder(root):
    return any(os.path.isdir(os.path.join(root, s)) for s in ("train",)) and any(
        os.path.isdir(os.path.join(root, s)) for s in ("val", "test"))


def _pil_interp(name):
    from PIL import Image
    return {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[name]


class ImageTransform:
    """PIL image -> normalised float tensor (3, size, size), the random draws from ``rng``.

    Training: RandomResizedCrop (scale 0.08-1, aspect 3/4-4/3; ``interpolation`` bilinear, bicubic
    or "random": one of the two per image) + horizontal flip, then optionally ``rand_augment``
    (``augment.RandAugment``) on the PIL image and ``erasing`` (``augment.RandomErasing``) on the
    normalised tensor, in timm's order. Eval: resize the short side to size / ``crop_pct``, center
    crop. The defaults (bilinear, 0.875, no RandAugment, no erasing) are the recipe's plain
    ImageFolder pipeline."""

    def __init__(self, size, train, interpolation="bilinear", crop_pct=0.875, rand_augment=None,
                 erasing=None, mean=None, std=None):
        self.size, self.train, self.interpolation, self.crop_pct = size, train, interpolation, crop_pct
        self.rand_augment, self.erasing = rand_augment, erasing
        self.mean = torch.tensor(mean or IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(std or IMAGENET_STD).view(3, 1, 1)

    def __call__(self, im, rng):
        from PIL import Image
        s = self.size
        if self.train:
            im = random_resized_crop(im, s, rng, interpolation=self.interpolation)
            if rng.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            if self.rand_augment is not None:
                im = self.rand_augment(im, rng)
        else:
            interp = "bilinear" if self.interpolation == "random" else self.interpolation
            r = round(s / self.crop_pct)
            w, h = im.size
            sc = r / min(w, h)
            im = im.resize((max(r, round(w * sc)), max(r, round(h * sc))), _pil_interp(interp))
            w, h = im.size
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s))
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        x = (x.float().div_(255) - self.mean) / self.std
        if self.train and self.erasing is not None:
            x = self.erasing(x, rng)
        return x

    def __repr__(self):
        parts = [f"size={self.size}", f"train={self.train}", f"interpolation={self.interpolation}"]
        if not self.train:
            parts.append(f"crop_pct={self.crop_pct}")
        parts += [repr(t) for t in (self.rand_augment, self.erasing) if t is not None]
        return f"ImageTransform({', '.join(parts)})"


class ImageFolder(torch.utils.data.Dataset):
    """root/CLASS/*.jpg (torchvision's layout) read with PIL, through ``transform`` (default
    ``ImageTransform(img_size, train)``: RandomResizedCrop + flip for training, resize/0.875 +
    center crop for eval). The random draws depend only on (seed, epoch, index), so resumed runs
    and any number of DataLoader workers see the same images. ``transform`` may be any callable
    ``(PIL image, random.Random) -> tensor`` (timm's transforms ignore the generator)."""

    def __init__(self, root, img_size, train, seed=0, classes=None, transform=None):
        self.classes = classes or sorted(d.name for d in os.scandir(root) if d.is_dir())
        idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(p, idx[c]) for c in self.classes
                        for p in sorted(glob.glob(os.path.join(root, c, "*"))) if p.endswith(IMG_EXT)]
        if not self.samples:
            raise FileNotFoundError(f"no images under {root}/CLASS/")
        self.img_size, self.train, self.seed, self.epoch = img_size, train, seed, 0
        self.num_classes = len(self.classes)
        self.transform = transform or ImageTransform(img_size, train)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image
        path, label = self.samples[i]
        rng = random.Random(hash((self.seed, self.epoch, i))) if self.train else None
        with Image.open(path) as im:
            x = self.transform(im.convert("RGB"), rng)
        return x, label


def random_resized_crop(im, size, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        interpolation="bilinear"):
    import math
    w, h = im.size
    area = w * h
    box = None
    for _ in range(10):
        a = area * rng.uniform(*scale)
        logr = (math.log(ratio[0]), math.log(ratio[1]))
        ar = math.exp(rng.uniform(*logr))
        cw, ch = int(round(math.sqrt(a * ar))), int(round(math.sqrt(a / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            box = (x0, y0, x0 + cw, y0 + ch)
            break
    if box is None:  # fallback: center crop
        c = min(w, h)
        x0, y0 = (w - c) // 2, (h - c) // 2
        box = (x0, y0, x0 + c, y0 + c)
    if interpolation == "random":
        interpolation = rng.choice(("bilinear", "bicubic"))
    return im.resize((size, size), _pil_interp(interpolation), box=box)
