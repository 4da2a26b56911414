"""Building blocks of the recipes in examples/ (and of the benchmarks that reuse them), one module
per job: ``dist`` (torchrun/DDP setup), ``training`` (optimiser groups, schedule, autocast,
checkpoints), ``metrics`` (JSON/CSV/PNG metrics, FLOPs, environment), ``sparsity`` (the 2:4
baseline), ``images`` and ``text`` (offline data), ``shards`` (memory-mapped token files and
training windows), ``augment`` (ImageNet augmentations: RandAugment, random erasing,
Mixup/CutMix), ``llama`` (LLaMA-architecture models and perplexity), ``distill`` (distillation
from the dense model while fine-tuning), ``t2t_vit`` and
``patch_transformer`` (vision models). Optional dependencies (tqdm, matplotlib, transformers, PIL,
zstandard, timm) are imported only where used; ``pip install -e examples`` installs them (timm aside).
"""
