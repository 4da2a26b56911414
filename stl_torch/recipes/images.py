"""Offline image data for the recipes: IDX files (Fashion-MNIST / MNIST) kept as one tensor on the
training device, and an ImageFolder tree (e.g. ImageNet) read with PIL. Nothing is downloaded."""
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


class ImageFolder(torch.utils.data.Dataset):
    """root/CLASS/*.jpg (torchvision's layout) read with PIL. Training augmentation is
    RandomResizedCrop(scale 0.08-1) + horizontal flip, eval is resize(size/0.875) + center crop;
    the random draws depend only on (seed, epoch, index), so resumed runs see the same images."""

    def __init__(self, root, img_size, train, seed=0, classes=None):
        self.classes = classes or sorted(d.name for d in os.scandir(root) if d.is_dir())
        idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(p, idx[c]) for c in self.classes
                        for p in sorted(glob.glob(os.path.join(root, c, "*"))) if p.endswith(IMG_EXT)]
        if not self.samples:
            raise FileNotFoundError(f"no images under {root}/CLASS/")
        self.img_size, self.train, self.seed, self.epoch = img_size, train, seed, 0
        self.num_classes = len(self.classes)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image
        path, label = self.samples[i]
        with Image.open(path) as im:
            im = im.convert("RGB")
            s = self.img_size
            if self.train:
                rng = random.Random(hash((self.seed, self.epoch, i)))
                im = random_resized_crop(im, s, rng)
                if rng.random() < 0.5:
                    im = im.transpose(Image.FLIP_LEFT_RIGHT)
            else:
                r = round(s / 0.875)
                w, h = im.size
                sc = r / min(w, h)
                im = im.resize((max(r, round(w * sc)), max(r, round(h * sc))), Image.BILINEAR)
                w, h = im.size
                left, top = (w - s) // 2, (h - s) // 2
                im = im.crop((left, top, left + s, top + s))
            x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        x = x.float().div_(255)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (x - mean) / std, label


def random_resized_crop(im, size, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    import math

    from PIL import Image
    w, h = im.size
    area = w * h
    for _ in range(10):
        a = area * rng.uniform(*scale)
        logr = (math.log(ratio[0]), math.log(ratio[1]))
        ar = math.exp(rng.uniform(*logr))
        cw, ch = int(round(math.sqrt(a * ar))), int(round(math.sqrt(a / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return im.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    c = min(w, h)  # fallback: center crop
    x0, y0 = (w - c) // 2, (h - c) // 2
    return im.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + c, y0 + c))
