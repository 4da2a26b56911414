"""ImageNet training augmentations as T2T-ViT trains (its main.py is timm's train.py: the DeiT
recipe), written without timm or torchvision: RandAugment on PIL images, random erasing on
normalised tensors, Mixup / CutMix on batches with label-smoothed soft targets, and the soft-target
cross-entropy. Each draws its randomness from a generator passed in (``random.Random`` per image,
``torch.Generator`` per batch), so a run is a pure function of its seeds and a resumed epoch is
identical. ``resolve_impl`` picks timm's implementations instead when asked and importable.

Semantics follow timm (``timm/data/auto_augment.py``, ``random_erasing.py``, ``mixup.py``, as of
the 0.3-0.4 releases T2T-ViT used): ``rand-m9-mstd0.5-inc1`` = 2 ops per image drawn with
replacement from the 15 "increasing" ops, each applied with probability 0.5 at a magnitude drawn
from N(9, 0.5) clipped to [0, 10]; erasing a rectangle of 2%-33% of the area, aspect 0.3-3.3,
with per-pixel N(0, 1) noise; Mixup (Beta(0.8)) or, with probability 0.5, CutMix (Beta(1.0), area-
corrected lambda) on the whole batch paired with its reverse.
"""
import math
import re

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["RandAugment", "RandomErasing", "Mixup", "soft_target_cross_entropy", "smooth_one_hot",
           "timm_available", "resolve_impl", "RAND_INCREASING_OPS", "RAND_OPS"]

MAX_LEVEL = 10.0
RAND_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
            "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
            "TranslateYRel"]
RAND_INCREASING_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                       "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                       "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
                       "TranslateXRel", "TranslateYRel"]


# ----------------------------------------------------------------------------- RandAugment
def _negate(v, rng):
    return -v if rng.random() > 0.5 else v


def _level_args(name, level, rng, translate_pct):
    """timm's level -> argument maps (``*_level_to_arg``)."""
    m = level / MAX_LEVEL
    if name == "Rotate":
        return _negate(m * 30.0, rng)
    if name in ("ShearX", "ShearY"):
        return _negate(m * 0.3, rng)
    if name in ("TranslateXRel", "TranslateYRel"):
        return _negate(m * translate_pct, rng)
    if name == "Posterize":
        return int(m * 4)
    if name == "PosterizeIncreasing":
        return 4 - int(m * 4)
    if name == "Solarize":
        return int(m * 256)
    if name == "SolarizeIncreasing":
        return 256 - int(m * 256)
    if name == "SolarizeAdd":
        return int(m * 110)
    if name.endswith("Increasing"):  # Color/Contrast/Brightness/Sharpness: 1 +- 0.9 m
        return max(0.1, 1.0 + _negate(m * 0.9, rng))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return m * 1.8 + 0.1
    return None


def _apply(name, img, arg, fill, resample):
    from PIL import Image, ImageEnhance, ImageOps
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Rotate":
        return img.rotate(arg, resample=resample, fillcolor=fill)
    if name.startswith("Posterize"):
        return img if arg >= 8 else ImageOps.posterize(img, arg)
    if name.startswith("SolarizeAdd"):
        lut = [min(255, i + arg) if i < 128 else i for i in range(256)]
        return img.point(lut * len(img.getbands()))
    if name.startswith("Solarize"):
        return ImageOps.solarize(img, arg)
    enh = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
           "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}
    for k, cls in enh.items():
        if name.startswith(k):
            return cls(img).enhance(arg)
    w, h = img.size
    affine = {"ShearX": (1, arg, 0, 0, 1, 0), "ShearY": (1, 0, 0, arg, 1, 0),
              "TranslateXRel": (1, 0, arg * w, 0, 1, 0),
              "TranslateYRel": (1, 0, 0, 0, 1, arg * h)}[name]
    return img.transform(img.size, Image.AFFINE, affine, resample=resample, fillcolor=fill)


class RandAugment:
    """timm-style RandAugment from a config string ``rand-m9-mstd0.5-inc1`` (sections: m
    magnitude, n ops per image, mstd magnitude noise, inc 1 for the "increasing" op set, p op
    probability). ``img_mean``: fill colour of rotate/shear/translate (timm: the dataset mean in
    0..255); ``interpolation``: "bilinear", "bicubic" or "random" (one of the two per op)."""

    def __init__(self, config="rand-m9-mstd0.5-inc1", img_mean=(124, 116, 104),
                 interpolation="random", translate_pct=0.45):
        parts = config.split("-")
        if parts[0] != "rand":
            raise ValueError(f"RandAugment config {config!r} must start with 'rand'")
        self.magnitude, self.num_ops, self.mstd, self.prob = MAX_LEVEL, 2, 0.0, 0.5
        self.ops = RAND_OPS
        for c in parts[1:]:
            key, val = (re.split(r"(\d.*)", c) + [""])[:2]
            if key == "m":
                self.magnitude = float(val)
            elif key == "n":
                self.num_ops = int(val)
            elif key == "mstd":
                self.mstd = float(val)
            elif key == "inc":
                self.ops = RAND_INCREASING_OPS if int(val) else RAND_OPS
            elif key == "p":
                self.prob = float(val)
            else:
                raise ValueError(f"RandAugment config {config!r}: unknown section {c!r}")
        self.config, self.fill = config, tuple(int(v) for v in img_mean)
        self.interpolation, self.translate_pct = interpolation, translate_pct

    def _resample(self, rng):
        from PIL import Image
        modes = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
        if self.interpolation == "random":
            return rng.choice((Image.BILINEAR, Image.BICUBIC))
        return modes[self.interpolation]

    def apply_op(self, name, img, rng):
        """One op as timm's AugmentOp: skipped with probability 1 - p, else at a noisy magnitude."""
        if self.prob < 1.0 and rng.random() > self.prob:
            return img
        m = rng.gauss(self.magnitude, self.mstd) if self.mstd > 0 else self.magnitude
        m = min(MAX_LEVEL, max(0.0, m))
        arg = _level_args(name, m, rng, self.translate_pct)
        fill = self.fill if img.mode == "RGB" else self.fill[0]
        return _apply(name, img, arg, fill, self._resample(rng))

    def __call__(self, img, rng):
        for name in [rng.choice(self.ops) for _ in range(self.num_ops)]:  # with replacement
            img = self.apply_op(name, img, rng)
        return img

    def __repr__(self):
        return f"RandAugment({self.config!r}, ops={len(self.ops)}, interpolation={self.interpolation})"


# ----------------------------------------------------------------------------- random erasing
class RandomErasing:
    """timm's RandomErasing on one normalised (C, H, W) tensor, in place: with ``probability``,
    ``max_count`` rectangles of ``min_area``..``max_area`` of the image (aspect ``min_aspect``..
    1/``min_aspect``, log-uniform) filled by N(0, 1) noise per pixel ("pixel"), per channel
    ("rand") or zeros ("const"). Draws from ``rng`` (random.Random) and ``gen`` (torch)."""

    def __init__(self, probability=0.25, mode="pixel", min_area=0.02, max_area=1 / 3,
                 min_aspect=0.3, max_count=1):
        if mode not in ("pixel", "rand", "const"):
            raise ValueError(f"random erasing mode {mode!r}: pixel, rand or const")
        self.probability, self.mode, self.max_count = probability, mode, max_count
        self.min_area, self.max_area = min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def __call__(self, x, rng, gen=None):
        if rng.random() > self.probability:
            return x
        c, h, w = x.shape
        area = h * w
        count = 1 if self.max_count == 1 else rng.randint(1, self.max_count)
        for _ in range(count):
            for _attempt in range(10):
                target = rng.uniform(self.min_area, self.max_area) * area / count
                ar = math.exp(rng.uniform(*self.log_aspect))
                eh, ew = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
                if ew < w and eh < h:
                    top, left = rng.randint(0, h - eh), rng.randint(0, w - ew)
                    if gen is None:
                        gen = torch.Generator().manual_seed(rng.getrandbits(63))
                    if self.mode == "pixel":
                        fill = torch.randn((c, eh, ew), generator=gen, dtype=x.dtype)
                    elif self.mode == "rand":
                        fill = torch.randn((c, 1, 1), generator=gen, dtype=x.dtype)
                    else:
                        fill = torch.zeros((c, 1, 1), dtype=x.dtype)
                    x[:, top:top + eh, left:left + ew] = fill.to(x.device)
                    break
        return x

    def __repr__(self):
        return f"RandomErasing(p={self.probability}, mode={self.mode}, count={self.max_count})"


# ----------------------------------------------------------------------------- Mixup / CutMix
def smooth_one_hot(y, num_classes, smoothing=0.0):
    """One-hot targets with label smoothing: 1 - s + s/K on the label, s/K elsewhere."""
    off = smoothing / num_classes
    t = torch.full((len(y), num_classes), off, device=y.device)
    return t.scatter_(1, y.view(-1, 1), 1.0 - smoothing + off)


class Mixup:
    """timm's Mixup in "batch" mode: with probability ``prob``, one lambda for the batch; CutMix
    (Beta(cutmix_alpha), a box of area 1 - lambda, lambda then corrected to the clipped box) with
    probability ``switch_prob``, else Mixup (Beta(mixup_alpha)). Each image is mixed with the
    batch's reverse (x.flip(0)); the targets are the two label-smoothed one-hots mixed by lambda.
    Returns (mixed x, soft targets); draws from the torch generator ``gen``."""

    def __init__(self, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=0.1,
                 num_classes=1000, prob=1.0, correct_lam=True):
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.switch_prob, self.smoothing, self.num_classes = switch_prob, label_smoothing, num_classes
        self.prob, self.correct_lam = prob, correct_lam
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("Mixup needs mixup_alpha > 0 or cutmix_alpha > 0")

    def params(self, gen):
        """(lam, use_cutmix, numpy generator for the box) of one batch."""
        rs = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))
        if rs.random() >= self.prob:
            return 1.0, False, rs
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cut = bool(rs.random() < self.switch_prob)
        else:
            cut = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if cut else self.mixup_alpha
        return float(rs.beta(alpha, alpha)), cut, rs

    def __call__(self, x, y, gen):
        lam, cut, rs = self.params(gen)
        if lam < 1.0:
            if cut:
                h, w = x.shape[-2:]
                ratio = math.sqrt(1 - lam)
                ch, cw = int(h * ratio), int(w * ratio)
                cy, cx = int(rs.integers(0, h)), int(rs.integers(0, w))
                y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
                x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
                x = x.clone()
                x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
                if self.correct_lam:
                    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
            else:
                x = x * lam + x.flip(0) * (1.0 - lam)
        t = smooth_one_hot(y, self.num_classes, self.smoothing)
        return x, t * lam + t.flip(0) * (1.0 - lam)

    def __repr__(self):
        return (f"Mixup(mixup={self.mixup_alpha}, cutmix={self.cutmix_alpha}, "
                f"switch={self.switch_prob}, smoothing={self.smoothing})")


def soft_target_cross_entropy(logits, target):
    """mean over the batch of -sum_k target_k log softmax(logits)_k (timm's SoftTargetCrossEntropy)."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


# ----------------------------------------------------------------------------- timm, optionally
def timm_available():
    try:
        import timm.data  # noqa: F401  (imports torchvision: fails where torchvision does)
        return True
    except Exception:
        return False


def resolve_impl(impl):
    """'auto' -> 'timm' when timm imports, else 'builtin'; 'timm' when it does not -> SystemExit."""
    if impl == "builtin":
        return "builtin"
    ok = timm_available()
    if impl == "timm" and not ok:
        raise SystemExit("--aug-impl timm: timm does not import here (it needs a torchvision that "
                         "matches torch); use --aug-impl builtin or auto")
    return "timm" if ok else "builtin"
