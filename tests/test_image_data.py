"""The image recipe's ImageNet pipeline on small generated fixtures: RandAugment, random erasing
and Mixup/CutMix deterministic under a seed and shape-preserving with timm's semantics, the
ImageFolder default pipeline unchanged, and T2T-ViT-7's ImageNet preset (values, overrides, a
2-step run with every augmentation and EMA) on a JPEG ImageFolder of Fashion-MNIST-like images."""
import json
import math
import random

import numpy as np
import pytest
import torch

from stl_recipes import augment as AU
from stl_recipes import images as RI
from stl_recipes import t2t_vit_recipe as t2t_train


# ----------------------------------------------------------------------------- images
def _image(w=48, h=40, seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    arr = (rng.random((h, w, 3)) * 120 + np.linspace(0, 120, w)[None, :, None]).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.mark.parametrize("name", AU.RAND_INCREASING_OPS + ["Posterize", "Solarize", "Color"])
def test_rand_augment_ops_deterministic_and_shape_preserving(name):
    ra = AU.RandAugment("rand-m9-mstd0.5-inc1-p1.0")  # p1.0: always apply the op
    img = _image()
    a = ra.apply_op(name, img, random.Random(7))
    b = ra.apply_op(name, img, random.Random(7))
    assert a.size == img.size and a.mode == "RGB" and a.tobytes() == b.tobytes()
    assert a.tobytes() != img.tobytes(), name  # at m ~ 9 every op changes this image


def test_rand_augment_config_and_policy():
    ra = AU.RandAugment("rand-m9-mstd0.5-inc1")
    assert (ra.magnitude, ra.num_ops, ra.mstd, ra.prob) == (9.0, 2, 0.5, 0.5)
    assert ra.ops == AU.RAND_INCREASING_OPS and len(ra.ops) == 15
    assert AU.RandAugment("rand-m5-n3").ops == AU.RAND_OPS
    with pytest.raises(ValueError):
        AU.RandAugment("rand-m9-x2")
    img = _image()
    outs = [ra(img, random.Random(s)).tobytes() for s in range(12)]
    assert outs == [ra(img, random.Random(s)).tobytes() for s in range(12)]
    assert len(set(outs)) > 6 and all(len(o) == len(img.tobytes()) for o in outs)


def test_random_erasing_deterministic_area_and_shape():
    er = AU.RandomErasing(probability=1.0, mode="pixel")
    x = torch.zeros(3, 40, 48)
    a, b = er(x.clone(), random.Random(3)), er(x.clone(), random.Random(3))
    assert a.shape == x.shape and torch.equal(a, b)
    frac = (a != 0).any(0).float().mean().item()
    assert 0.015 < frac <= 1 / 3 + 0.02, frac
    assert torch.equal(AU.RandomErasing(probability=0.0)(x.clone(), random.Random(3)), x)
    c = AU.RandomErasing(probability=1.0, mode="const")(torch.ones(3, 40, 48), random.Random(3))
    assert (c == 0).any() and (c == 1).any()


def test_mixup_cutmix_deterministic_soft_targets():
    mix = AU.Mixup(0.8, 1.0, 0.5, label_smoothing=0.1, num_classes=10)
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 16, 16).contiguous()
    y = torch.arange(8)
    seen = set()
    for s in range(20):
        xa, ta = mix(x, y, torch.Generator().manual_seed(s))
        xb, tb = mix(x, y, torch.Generator().manual_seed(s))
        assert torch.equal(xa, xb) and torch.equal(ta, tb) and xa.shape == x.shape
        assert torch.allclose(ta.sum(1), torch.ones(8)) and ta.min() >= 0.01 - 1e-7
        lam, cut, _ = mix.params(torch.Generator().manual_seed(s))
        seen.add(cut)
        own = ta[torch.arange(8), y] - 0.01  # the label's share of 0.9 (smoothing 0.1, 10 classes)
        if cut:  # each image keeps exactly the pixels outside the box: lambda = kept fraction
            kept = (xa[:, 0] == x[:, 0]).float().mean((1, 2))
            assert torch.allclose(own / 0.9, kept, atol=1e-6), (own / 0.9, kept)
        else:  # a convex mix of the image with its reverse
            lam_t = own[0] / 0.9
            assert torch.allclose(xa, x * lam_t + x.flip(0) * (1 - lam_t), atol=1e-5)
    assert seen == {True, False}  # both modes drawn (switch prob 0.5)
    logits = torch.randn(8, 10)
    hard = AU.smooth_one_hot(y % 10, 10, 0.0)
    assert torch.allclose(AU.soft_target_cross_entropy(logits, hard),
                          torch.nn.functional.cross_entropy(logits, y % 10))


def test_aug_impl_resolution():
    assert AU.resolve_impl("builtin") == "builtin"
    if AU.timm_available():
        assert AU.resolve_impl("auto") == "timm"
    else:
        assert AU.resolve_impl("auto") == "builtin"
        with pytest.raises(SystemExit, match="timm"):
            AU.resolve_impl("timm")


def _reference_train_pipeline(path, size, seed, epoch, i):
    """The ImageFolder training pipeline as it was before the augmentations were added."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        rng = random.Random(hash((seed, epoch, i)))
        w, h = im.size
        area, box = w * h, None
        for _ in range(10):
            a = area * rng.uniform(0.08, 1.0)
            ar = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = int(round(math.sqrt(a * ar))), int(round(math.sqrt(a / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
                box = (x0, y0, x0 + cw, y0 + ch)
                break
        if box is None:
            c = min(w, h)
            box = ((w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c)
        im = im.resize((size, size), Image.BILINEAR, box=box)
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
    x = x.float().div_(255)
    return (x - torch.tensor(RI.IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(RI.IMAGENET_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """A JPEG ImageFolder of Fashion-MNIST-like images (class c: a bright bar at row 2c of a 28 x 28
    noise image), upscaled to 64 px RGB with a per-image tint."""
    from PIL import Image
    d = tmp_path_factory.mktemp("jpeg")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in range(3):
            (d / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                x = rng.integers(0, 60, (28, 28)).astype(np.uint8)
                x[2 + 2 * c: 4 + 2 * c, 4:24] = 230
                g = np.asarray(Image.fromarray(x).resize((64, 64), Image.BICUBIC), np.float32)
                rgb = (g[..., None] * rng.uniform(0.6, 1.0, 3)).astype(np.uint8)
                Image.fromarray(rgb).save(d / split / f"class{c}" / f"{i}.jpg", quality=90)
    return d


def test_image_folder_default_pipeline_unchanged(jpeg_folder):
    ds = RI.ImageFolder(str(jpeg_folder / "train"), 32, True, seed=5)
    ds.set_epoch(2)
    for i in (0, 7, 17):
        x, label = ds[i]
        ref = _reference_train_pipeline(ds.samples[i][0], 32, 5, 2, i)
        assert torch.equal(x, ref) and label == ds.samples[i][1]


def test_image_transform_with_augmentations_deterministic(jpeg_folder):
    a = t2t_train.parse_args(["--preset", "t2t-vit-7-imagenet", "--aug-impl", "builtin",
                              "--img-size", "32"])
    tf = t2t_train.train_transform(a)
    assert tf.rand_augment is not None and tf.erasing is not None and tf.interpolation == "random"
    ds = RI.ImageFolder(str(jpeg_folder / "train"), 32, True, seed=1, transform=tf)
    x1 = torch.stack([ds[i][0] for i in range(len(ds))])
    x2 = torch.stack([ds[i][0] for i in range(len(ds))])
    assert x1.shape == (18, 3, 32, 32) and torch.equal(x1, x2) and torch.isfinite(x1).all()
    ds.set_epoch(1)
    assert not torch.equal(torch.stack([ds[i][0] for i in range(len(ds))]), x1)
    ev = RI.ImageTransform(32, False, "bicubic", crop_pct=0.9)
    from PIL import Image
    with Image.open(ds.samples[0][0]) as im:
        assert ev(im.convert("RGB"), None).shape == (3, 32, 32)


def test_t2t_preset_values_and_overrides():
    a = t2t_train.parse_args(["--preset", "t2t-vit-7-imagenet"])
    assert (a.img_size, a.batch_size, a.epochs, a.warmup_epochs, a.cooldown_epochs) == (224, 512, 310, 10, 10)
    assert (a.lr, a.weight_decay, a.min_lr, a.label_smoothing, a.drop_path) == (1e-3, 0.03, 1e-5, 0.1, 0.1)
    assert (a.mixup, a.cutmix, a.mixup_switch_prob, a.reprob) == (0.8, 1.0, 0.5, 0.25)
    assert a.rand_augment == "rand-m9-mstd0.5-inc1" and a.model_ema_decay == 0.99996
    assert t2t_train.peak_lr(a) == 1e-3
    b = t2t_train.parse_args(["--preset", "t2t-vit-7-imagenet", "--batch-size", "128", "--mixup", "0"])
    assert t2t_train.peak_lr(b) == pytest.approx(2.5e-4) and b.mixup == 0.0 and b.cutmix == 1.0
    plain = t2t_train.parse_args([])  # no preset: the Fashion-MNIST defaults as before
    assert (plain.lr, plain.mixup, plain.rand_augment, plain.reprob, plain.epochs) == (1e-3, 0.0, None, 0.0, 30)
    model, _, _ = t2t_train.build_model(a, 3, 1000)
    assert 4.2e6 < sum(p.numel() for p in model.parameters()) < 4.3e6  # T2T-ViT-7: 4.3M


def test_t2t_preset_tiny_run_with_builtin_augmentations(jpeg_folder, tmp_path):
    """The preset end to end, shrunk: 2 steps with RandAugment, erasing, Mixup/CutMix and EMA."""
    out = tmp_path / "run"
    t2t_train.main(["--preset", "t2t-vit-7-imagenet", "--data-dir", str(jpeg_folder),
                    "--aug-impl", "builtin", "--img-size", "32", "--embed-dim", "32", "--depth", "1",
                    "--num-heads", "2", "--token-dim", "16", "--batch-size", "4", "--epochs", "1",
                    "--max-steps-per-epoch", "2", "--workers", "0", "--no-progress",
                    "--out-dir", str(out)])
    m = json.loads((out / "metrics.json").read_text())
    row, meta = m["history"][-1], m["meta"]
    assert meta["augment"]["impl"] == "builtin" and "Mixup" in meta["augment"]["mixup"]
    assert "RandAugment" in meta["augment"]["train_transform"]
    assert meta["peak_lr"] == pytest.approx(1e-3 * 4 / 512)
    assert all(math.isfinite(row[k]) for k in ("train_loss", "test_loss", "test_loss_ema"))
    assert 0 <= row["test_top1_ema"] <= 1
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert "ema" in ck and ck["args"]["preset"] == "t2t-vit-7-imagenet"


def test_t2t_rand_augment_needs_imagefolder(tmp_path):
    from stl_recipes import images as D
    x = np.zeros((4, 28, 28), np.uint8)
    for split in ("train", "test"):
        img, lab = D.IDX_FILES[split]
        D.write_idx(str(tmp_path / (img + ".gz")), x)
        D.write_idx(str(tmp_path / (lab + ".gz")), np.arange(4, dtype=np.uint8))
    with pytest.raises(SystemExit, match="ImageFolder"):
        t2t_train.main(["--data-dir", str(tmp_path), "--rand-augment", "rand-m9", "--no-progress",
                        "--out-dir", str(tmp_path / "o")])
