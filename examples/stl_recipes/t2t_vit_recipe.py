"""Train T2T-ViT from scratch with every linear layer dense or STL.

Offline default data: Fashion-MNIST (Debian package dataset-fashion-mnist); an ImageNet-style
ImageFolder tree (DIR/train/CLASS/*.jpg, DIR/val/CLASS/*.jpg) via --data-dir.

  python examples/t2t_vit_train.py --linear dense
  python examples/t2t_vit_train.py --linear stl --init strassen --tile 4 --rank 24
  torchrun --nproc_per_node=2 examples/t2t_vit_train.py --linear stl     # DDP (gloo/NCCL)
  python examples/t2t_vit_train.py --linear stl --resume                 # continue a killed run
  torchrun --nproc_per_node=8 examples/t2t_vit_train.py --preset t2t-vit-7-imagenet \
      --data-dir /data/imagenet --linear stl                             # the paper's ImageNet run

--preset t2t-vit-7-imagenet sets T2T-ViT-7's published ImageNet recipe (Yuan et al., "Tokens-to-
Token ViT", ICCV 2021; github.com/yitu-opensource/T2T-ViT: README "Train" for T2T-ViT-7 and the
defaults of its main.py, which is timm's train.py): 224 px, batch 512, AdamW lr 1e-3 (scaled
linearly with the batch, --lr-scale-batch 512), weight decay 0.03, 300 cosine epochs to 1e-5 after
10 warm-up epochs, then 10 cool-down epochs at 1e-5 (310 in all), label smoothing 0.1, Mixup 0.8 /
CutMix 1.0 (switch 0.5), RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25 (pixel), drop path
0.1, random bilinear/bicubic resizing, eval at bicubic crop 0.9, model EMA 0.99996. Any flag given
on the command line overrides the preset. Augmentations are built in (no timm or torchvision
needed); --aug-impl timm uses timm's when it imports.

Writes OUT/metrics.json (config, params, linear-layer FLOPs, per-epoch rows), OUT/metrics.csv,
OUT/metrics.png (train loss and test top-1 per epoch) and OUT/checkpoint.pt (saved atomically
after every epoch; --resume continues from the last finished epoch).
"""
import argparse
import copy
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

import stl_torch
from stl_torch.cli import add_stl_args, stl_config_from_args
from . import augment as AU
from . import dist as RD
from . import images as D
from . import metrics as RM
from . import training as RT
from .t2t_vit import stl_filter, t2t_vit_7


# T2T-ViT-7 on ImageNet as published: github.com/yitu-opensource/T2T-ViT, README "Train" (8 GPUs x
# 64 images, --lr 1e-3 --weight-decay .03 --amp --img-size 224) and main.py's defaults (adamw,
# cosine to --min-lr 1e-5, 300 epochs + --cooldown-epochs 10, --warmup-epochs 10, --smoothing 0.1,
# --mixup 0.8 --cutmix 1.0 --mixup-switch-prob 0.5, --aa rand-m9-mstd0.5-inc1, --reprob 0.25
# --remode pixel, --drop-path 0.1, --train-interpolation random, --model-ema-decay 0.99996, -j 8)
# and models/t2t_vit.py's default_cfg (crop_pct 0.9, bicubic). No repeated augmentation (that is
# DeiT's main.py, not T2T-ViT's).
PRESETS = {
    "t2t-vit-7-imagenet": dict(
        img_size=224, embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0, token_dim=64,
        tokens_type="performer", drop_path=0.1, epochs=310, cooldown_epochs=10, warmup_epochs=10,
        batch_size=512, lr=1e-3, lr_scale_batch=512, min_lr=1e-5, weight_decay=0.03,
        label_smoothing=0.1, clip_grad=0.0, mixup=0.8, cutmix=1.0, mixup_switch_prob=0.5,
        rand_augment="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel",
        interpolation="random", eval_interpolation="bicubic", crop_pct=0.9,
        model_ema_decay=0.99996, workers=8),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a published training recipe as defaults (flags still override); "
                        "t2t-vit-7-imagenet: T2T-ViT-7's ImageNet recipe (Yuan et al. ICCV 2021, "
                        "yitu-opensource/T2T-ViT README + main.py), see the module docstring")
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=D.FASHION_MNIST_DIR,
                   help="IDX directory (Fashion-MNIST/MNIST files) or ImageFolder root with "
                        "train/ and val/ (or test/)")
    g.add_argument("--img-size", type=int, default=None,
                   help="input resolution (default: 28 for IDX data, 224 for ImageFolder)")
    g.add_argument("--train-subset", type=int, default=None, help="use N random training images")
    g.add_argument("--test-subset", type=int, default=None, help="use N random test images")
    g.add_argument("--workers", type=int, default=4, help="DataLoader workers (ImageFolder only)")
    g = p.add_argument_group("augmentation (off by default; --preset t2t-vit-7-imagenet sets them)")
    g.add_argument("--aug-impl", choices=["auto", "builtin", "timm"], default="auto",
                   help="RandAugment / erasing / Mixup implementation: builtin (stl_recipes."
                        "augment, no dependencies), timm (needs a working timm + torchvision), "
                        "auto: timm when it imports, else builtin")
    g.add_argument("--rand-augment", default=None, metavar="CONFIG",
                   help="RandAugment config as timm spells it, e.g. rand-m9-mstd0.5-inc1 "
                        "(ImageFolder data only)")
    g.add_argument("--reprob", type=float, default=0.0, help="random erasing probability")
    g.add_argument("--remode", choices=["pixel", "rand", "const"], default="pixel",
                   help="random erasing fill")
    g.add_argument("--mixup", type=float, default=0.0, help="Mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=0.0, help="CutMix alpha (0: off)")
    g.add_argument("--mixup-switch-prob", type=float, default=0.5,
                   help="probability of CutMix instead of Mixup when both are on")
    g.add_argument("--mixup-prob", type=float, default=1.0, help="probability of mixing a batch")
    g.add_argument("--interpolation", choices=["bilinear", "bicubic", "random"], default="bilinear",
                   help="training RandomResizedCrop (and RandAugment) resampling (ImageFolder)")
    g.add_argument("--eval-interpolation", choices=["bilinear", "bicubic"], default="bilinear",
                   help="eval resize resampling (ImageFolder)")
    g.add_argument("--crop-pct", type=float, default=0.875,
                   help="eval center crop = img size / crop pct of the resized image (ImageFolder)")
    g = p.add_argument_group("model (defaults: T2T-ViT-7)")
    g.add_argument("--embed-dim", type=int, default=256, help="ViT embedding dim")
    g.add_argument("--depth", type=int, default=7, help="ViT blocks")
    g.add_argument("--num-heads", type=int, default=4, help="attention heads")
    g.add_argument("--mlp-ratio", type=float, default=2.0, help="MLP hidden / embed dim")
    g.add_argument("--token-dim", type=int, default=64, help="token-transformer dim in the T2T module")
    g.add_argument("--tokens-type", choices=["performer", "transformer"], default="performer",
                   help="T2T token transformer: Performer (linear attention) or plain attention")
    g.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate")
    g = p.add_argument_group("linear layers")
    g.add_argument("--linear", choices=["dense", "stl"], default="dense",
                   help="stl: every nn.Linear except the classifier head becomes an STLinear")
    add_stl_args(g, ("tile", "rank", "init", "ed_norm"), init="strassen", help_text={
        "ed_norm": "norm of each product's E row and D column, Wt takes the scale (0: the "
                   "decomposition's balanced scale, the default before 2026-11-24)"})
    g.add_argument("--stl-layers", choices=["all", "saving"], default="all",
                   help="all: every linear layer but the head; saving: only those where STL needs"
                        " fewer multiply-adds than dense (narrow T2T layers stay dense)")
    g.add_argument("--ed-lr-mult", type=float, default=1.0,
                   help="learning-rate multiplier for STL's E and D")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=30, help="training epochs")
    g.add_argument("--batch-size", type=int, default=128, help="global batch (split over ranks)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    g.add_argument("--lr-scale-batch", type=int, default=0,
                   help="N > 0: the peak lr is --lr x batch / N (linear scaling rule); 0: --lr")
    g.add_argument("--min-lr", type=float, default=1e-5, help="learning rate at the end of the cosine")
    g.add_argument("--weight-decay", type=float, default=0.05,
                   help="AdamW weight decay (weight matrices and STL Wt only)")
    g.add_argument("--warmup-epochs", type=float, default=2.0, help="linear warm-up length")
    g.add_argument("--cooldown-epochs", type=float, default=0.0,
                   help="epochs at --min-lr after the cosine (part of --epochs)")
    g.add_argument("--model-ema-decay", type=float, default=0.0,
                   help="keep an exponential moving average of the weights with this decay per "
                        "step and evaluate it too (0: off)")
    g.add_argument("--label-smoothing", type=float, default=0.1,
                   help="cross-entropy label smoothing (with Mixup/CutMix: in the soft targets)")
    g.add_argument("--clip-grad", type=float, default=0.0, help="max grad norm (0: off)")
    g.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    g.add_argument("--amp", choices=["auto", "bf16", "none"], default="auto",
                   help="bf16 autocast (auto: on for CUDA)")
    g = p.add_argument_group("run")
    g.add_argument("--out-dir", default=None, help="default: runs/t2t_vit-<linear>[-<init>]")
    g.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt if it exists")
    g.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="exit after N epochs in this invocation (time-sliced jobs; resume later)")
    g.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap (quick tests)")
    g.add_argument("--overfit-batch", action="store_true",
                   help="debug: train on one fixed batch every step (loss should go to ~0)")
    g.add_argument("--seed", type=int, default=0, help="weights, data order, augmentation")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    g.add_argument("--rank-checksums", action="store_true",
                   help="every rank writes OUT/checksum_rank<R>.txt (a parameter hash) at the end")
    pre, _ = p.parse_known_args(argv)
    if pre.preset:
        p.set_defaults(**PRESETS[pre.preset])
    a = p.parse_args(argv)
    if a.out_dir is None:
        a.out_dir = os.path.join("runs", f"t2t_vit-{a.linear}" + (f"-{a.init}" if a.linear == "stl" else "")
                                 + (f"-{a.preset}" if a.preset else ""))
    return a


def peak_lr(a):
    return a.lr * a.batch_size / a.lr_scale_batch if a.lr_scale_batch else a.lr


# settings that change the model or the data: a checkpoint only resumes under the same ones
MODEL_KEYS = ("data_dir", "img_size", "train_subset", "test_subset", "embed_dim", "depth",
              "num_heads", "mlp_ratio", "token_dim", "tokens_type", "linear", "tile", "rank", "init",
              "stl_layers", "ed_norm", "batch_size", "seed")
# checked too when the checkpoint has them (checkpoints from before the augmentation flags do not)
DATA_KEYS = ("preset", "aug_impl", "rand_augment", "reprob", "remode", "mixup", "cutmix",
             "mixup_switch_prob", "mixup_prob", "interpolation", "model_ema_decay")


class TimmTransform:
    """timm's transform behind ImageFolder's (image, rng) interface: timm draws from the global
    generators, which DataLoader seeds per worker and epoch (picklable for any start method)."""

    def __init__(self, tf):
        self.tf = tf

    def __call__(self, im, rng):
        return self.tf(im)

    def __repr__(self):
        return f"timm {self.tf!r}"


def train_transform(a):
    """The ImageFolder training transform that the flags ask for (builtin or timm)."""
    mean, std = D.IMAGENET_MEAN, D.IMAGENET_STD
    if a.aug_impl == "timm":
        from timm.data import create_transform
        return TimmTransform(create_transform(
            a.img_size, is_training=True, auto_augment=a.rand_augment, interpolation=a.interpolation,
            re_prob=a.reprob, re_mode=a.remode, re_count=1, mean=mean, std=std))
    ra = None
    if a.rand_augment:
        ra = AU.RandAugment(a.rand_augment, img_mean=tuple(min(255, round(255 * m)) for m in mean),
                            interpolation=a.interpolation)
    er = AU.RandomErasing(a.reprob, a.remode) if a.reprob > 0 else None
    return D.ImageTransform(a.img_size, True, a.interpolation, rand_augment=ra, erasing=er)


def make_mixup(a, num_classes):
    """Mixup/CutMix as (x, y, generator) -> (x, soft targets), or None when both are off."""
    if a.mixup <= 0 and a.cutmix <= 0:
        return None
    if a.aug_impl == "timm":
        from timm.data import Mixup
        m = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, prob=a.mixup_prob,
                  switch_prob=a.mixup_switch_prob, mode="batch",
                  label_smoothing=a.label_smoothing, num_classes=num_classes)
        return lambda x, y, gen: m(x, y)
    return AU.Mixup(a.mixup, a.cutmix, a.mixup_switch_prob, a.label_smoothing, num_classes,
                    prob=a.mixup_prob)


class ModelEma:
    """Exponential moving average of a model's parameters and buffers (timm's ModelEma):
    ema = decay * ema + (1 - decay) * current after every optimizer step."""

    def __init__(self, model, decay):
        self.module = copy.deepcopy(RD.unwrap(model)).eval()
        self.decay = decay
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        cur = RD.unwrap(model).state_dict()
        for k, e in self.module.state_dict().items():
            if e.dtype.is_floating_point:
                e.mul_(self.decay).add_(cur[k].detach(), alpha=1.0 - self.decay)
            else:
                e.copy_(cur[k])


def build_data(a, d):
    if D.is_idx_dir(a.data_dir):
        if a.rand_augment or a.reprob > 0:
            raise SystemExit("--rand-augment and --reprob work on ImageFolder data (PIL images), "
                             "not on IDX tensors; pass --rand-augment '' --reprob 0 to drop them")
        train, test = D.load_idx_dataset(a.data_dir, a.train_subset, a.test_subset, a.seed)
        a.img_size = a.img_size or 28
        return "idx", train.to(d.device), test.to(d.device), 1, train.num_classes
    if D.is_imagefolder(a.data_dir):
        a.img_size = a.img_size or 224
        train = D.ImageFolder(os.path.join(a.data_dir, "train"), a.img_size, True, a.seed,
                              transform=train_transform(a))
        vdir = "val" if os.path.isdir(os.path.join(a.data_dir, "val")) else "test"
        test = D.ImageFolder(os.path.join(a.data_dir, vdir), a.img_size, False, a.seed,
                             classes=train.classes,
                             transform=D.ImageTransform(a.img_size, False, a.eval_interpolation,
                                                        crop_pct=a.crop_pct))
        for ds, n in ((train, a.train_subset), (test, a.test_subset)):
            if n and n < len(ds.samples):
                g = torch.Generator().manual_seed(a.seed)
                ds.samples = [ds.samples[i] for i in torch.randperm(len(ds.samples), generator=g)[:n]]
        return "folder", train, test, 3, train.num_classes
    raise FileNotFoundError(
        f"{a.data_dir}: neither IDX files (Fashion-MNIST: apt-get install -y dataset-fashion-mnist)"
        f" nor an ImageFolder root with train/ and val/")


def build_model(a, in_chans, num_classes):
    model = t2t_vit_7(img_size=a.img_size, in_chans=in_chans, num_classes=num_classes,
                      embed_dim=a.embed_dim, depth=a.depth, num_heads=a.num_heads,
                      mlp_ratio=a.mlp_ratio, token_dim=a.token_dim, tokens_type=a.tokens_type,
                      drop_path_rate=a.drop_path, pad_features=a.tile,
                      qk_scale=a.embed_dim ** -0.5)
    report, converted = None, []
    if a.linear == "stl":
        cfg = stl_config_from_args(a)
        report = stl_torch.convert(model, cfg, lambda m, fqn: stl_filter(fqn, m),
                                   only_if_cheaper=a.stl_layers == "saving")
        converted = [x.name for x in report.converted]
    return model, converted, report


class Batches:
    """One epoch of (x, y) batches for this rank. Index order comes from DistributedSampler
    (seeded by --seed and the epoch), so a resumed epoch sees exactly the same batches."""

    def __init__(self, kind, ds, a, d, train):
        self.kind, self.ds, self.a, self.d, self.train = kind, ds, a, d, train
        self.local_bs = a.batch_size // d.world
        if train:
            self.sampler = torch.utils.data.distributed.DistributedSampler(
                range(len(ds)), num_replicas=d.world, rank=d.rank, shuffle=True, seed=a.seed,
                drop_last=True)
            self.steps = len(self.sampler) // self.local_bs
            if a.max_steps_per_epoch:
                self.steps = min(self.steps, a.max_steps_per_epoch)
        else:  # every test image exactly once over all ranks (no padding duplicates)
            self.indices = list(range(d.rank, len(ds), d.world))
            self.steps = math.ceil(len(self.indices) / self.local_bs)

    def epoch(self, epoch):
        a, d = self.a, self.d
        if self.train:
            self.sampler.set_epoch(epoch)
            idx = list(self.sampler)
        else:
            idx = self.indices
        if self.kind == "idx":
            gen = torch.Generator().manual_seed(a.seed * 100003 + epoch * 1009 + d.rank)
            for s in range(self.steps):
                b = idx[s * self.local_bs:(s + 1) * self.local_bs]
                if a.overfit_batch and self.train:  # the same images every step and epoch
                    b = list(range(d.rank * self.local_bs, (d.rank + 1) * self.local_bs))
                bi = torch.tensor(b, device=d.device)
                yield D.gpu_batch(self.ds, bi, a.img_size, self.train and not a.no_augment
                                  and not a.overfit_batch, gen)
        else:
            self.ds.set_epoch(epoch)
            sub = torch.utils.data.Subset(self.ds, idx[:self.steps * self.local_bs])
            loader = torch.utils.data.DataLoader(
                sub, batch_size=self.local_bs, shuffle=False, num_workers=a.workers,
                pin_memory=d.device.type == "cuda", persistent_workers=False)
            for x, y in loader:
                yield x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)


def evaluate(model, batches, d, amp):
    model.eval()
    loss_sum = correct = n = 0.0
    with torch.no_grad():
        for x, y in batches.epoch(0):
            with amp():
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(-1) == y).sum().item()
            n += len(y)
    loss_sum, correct, n = RD.all_reduce_sum(d, loss_sum, correct, n)
    return loss_sum / max(n, 1), correct / max(n, 1)


def main(argv=None):
    a = parse_args(argv)
    a.aug_impl = AU.resolve_impl(a.aug_impl)
    d = RD.setup_distributed(a.device)
    if a.batch_size % d.world:
        raise SystemExit(f"--batch-size {a.batch_size} must be divisible by the world size {d.world}")
    if d.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    kind, train_ds, test_ds, in_chans, num_classes = build_data(a, d)
    RD.seed_everything(a.seed)  # same initial weights on every rank (DDP also broadcasts them)
    model, converted, report = build_model(a, in_chans, num_classes)
    model.to(d.device)
    a.amp = RT.resolve_amp(model, d.device, a.amp)

    # accounting on one image, before DDP wrapping
    example = torch.zeros(1, in_chans, a.img_size, a.img_size, device=d.device)
    model.eval()
    fl = RM.linear_flops(model, example)
    lr = peak_lr(a)
    mixup = make_mixup(a, num_classes)
    meta = {"recipe": "t2t_vit", "args": vars(a), "env": RM.env_info(d), "data": kind,
            "peak_lr": lr, "augment": {"impl": a.aug_impl, "mixup": repr(mixup) if mixup else None,
                                       "train_transform": repr(getattr(train_ds, "transform", None))},
            "num_classes": num_classes, "train_images": len(train_ds), "test_images": len(test_ds),
            **RM.param_counts(model),
            "linear_flops_per_image": fl["linear_flops"],
            "linear_flops_per_image_if_dense": fl["linear_flops_if_dense"],
            "linear_flop_reduction": fl["linear_flop_reduction"],
            "stl_layers": len(converted), "stl_layer_names": converted,
            "flops_per_layer": fl["per_layer"], "stl_torch_flops": fl["stl_torch_flops"],
            "convert_report": RM.report_to_json(report)}

    groups = RT.param_groups(model, lr=lr, weight_decay=a.weight_decay, ed_lr_mult=a.ed_lr_mult,
                            no_decay_names=("cls_token", "pos_embed"))
    opt = RT.make_optimizer(groups, device=d.device)
    train_b, test_b = Batches(kind, train_ds, a, d, True), Batches(kind, test_ds, a, d, False)
    total = a.epochs * train_b.steps
    cosine = total - int(a.cooldown_epochs * train_b.steps)  # then --min-lr to the end
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, RT.warmup_cosine(cosine, int(a.warmup_epochs * train_b.steps), a.min_lr / lr))
    ema = ModelEma(model, a.model_ema_decay) if a.model_ema_decay > 0 else None
    metrics = RM.Metrics(a.out_dir, meta, enabled=d.main, plot={
        "x": "epoch", "panels": [("train_loss", "train loss"), ("test_top1", "test top-1")],
        "title": f"T2T-ViT {a.linear}" + (f" t={a.tile} r={a.rank} init={a.init}" if a.linear == "stl" else "")})

    start_epoch = 0
    ckpt_path = os.path.join(a.out_dir, "checkpoint.pt")
    if a.resume and os.path.exists(ckpt_path):
        ck = RT.load_checkpoint(ckpt_path)
        RT.check_resume_args(ck["args"], vars(a),
                             MODEL_KEYS + tuple(k for k in DATA_KEYS if k in ck["args"]))
        model.load_state_dict(ck["model"])
        if ema is not None:
            ema.module.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch = ck["epoch"] + 1
        metrics.history = ck["history"]
        if d.main:
            print(f"resumed from {ckpt_path}: {start_epoch} epoch(s) done", flush=True)
    elif a.resume and d.main:
        print(f"--resume: no checkpoint at {ckpt_path}, starting fresh", flush=True)
    if d.main:
        print(f"T2T-ViT ({kind} data, {a.img_size}px, {num_classes} classes): "
              f"{meta['params_total'] / 1e6:.3f}M params, linear {a.linear}"
              f" ({len(converted)} STL layers), linear FLOPs/image {fl['linear_flops'] / 1e6:.1f}M "
              f"(dense {fl['linear_flops_if_dense'] / 1e6:.1f}M), world {d.world}, {d.device}",
              flush=True)
        if a.preset or mixup or a.rand_augment or a.reprob:
            print(f"recipe {a.preset or 'custom'}: peak lr {lr:.2e}, {a.epochs} epochs "
                  f"(warm-up {a.warmup_epochs}, cool-down {a.cooldown_epochs}), augment "
                  f"{meta['augment']}, EMA {a.model_ema_decay or 'off'}", flush=True)
        if report is not None:
            print(report, flush=True)

    net = model
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    amp = RT.autocast_ctx(d.device, a.amp)
    crit = nn.CrossEntropyLoss(label_smoothing=a.label_smoothing)
    done_this_run = 0
    for epoch in range(start_epoch, a.epochs):
        # reseeding per epoch (dropout, drop-path) makes a resumed epoch identical to an unbroken one
        torch.manual_seed(a.seed * 7919 + epoch * 104729 + d.rank)
        mix_gen = torch.Generator().manual_seed(a.seed * 65537 + epoch * 8191 + d.rank)
        net.train()
        t0 = time.time()
        loss_sum = correct = seen = 0.0
        bar = RM.progress(train_b.epoch(epoch), d.main and not a.no_progress, total=train_b.steps,
                         desc=f"epoch {epoch + 1}/{a.epochs}", leave=False)
        for x, y in bar:
            if mixup is not None:  # soft targets; train top-1 below is against the unmixed labels
                x, y_soft = mixup(x, y, mix_gen)
            with amp():
                logits = net(x)
                if mixup is not None:
                    loss = AU.soft_target_cross_entropy(logits, y_soft)
                else:
                    loss = crit(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if a.clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), a.clip_grad)
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(model)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(-1) == y).sum().item()
            seen += len(y)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        train_time = time.time() - t0
        loss_sum, correct, seen = RD.all_reduce_sum(d, loss_sum, correct, seen)
        test_loss, test_top1 = evaluate(net, test_b, d, amp)
        row = {"epoch": epoch + 1, "step": (epoch + 1) * train_b.steps,
               "train_loss": loss_sum / seen, "train_top1": correct / seen,
               "test_loss": test_loss, "test_top1": test_top1, "lr": sched.get_last_lr()[0],
               "epoch_time_s": round(time.time() - t0, 3),
               "train_images_per_s": round(seen / max(train_time, 1e-9), 2)}
        if ema is not None:
            row["test_loss_ema"], row["test_top1_ema"] = evaluate(ema.module, test_b, d, amp)
        if not all(math.isfinite(row[k]) for k in ("train_loss", "test_loss")):
            raise FloatingPointError(f"non-finite loss at epoch {epoch + 1}: {row}")
        metrics.history.append(row)
        if d.main:
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in row.items()), flush=True)
            metrics.write()
            RT.atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                 "scheduler": sched.state_dict(), "epoch": epoch,
                                 "history": metrics.history, "args": vars(a),
                                 **({"ema": ema.module.state_dict()} if ema else {})}, ckpt_path)
        RD.barrier(d)
        done_this_run += 1
        if a.stop_after is not None and done_this_run >= a.stop_after and epoch + 1 < a.epochs:
            if d.main:
                print(f"--stop-after {a.stop_after}: stopping; continue with --resume", flush=True)
            break
    if a.rank_checksums:
        os.makedirs(a.out_dir, exist_ok=True)
        with open(os.path.join(a.out_dir, f"checksum_rank{d.rank}.txt"), "w") as f:
            f.write(RD.param_checksum(model) + "\n")
    RD.cleanup_distributed(d)
    return metrics.history
