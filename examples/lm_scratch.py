#!/usr/bin/env python
"""Train a small LLaMA-architecture byte-level language model from scratch, dense, dense narrowed
to STL's multiply-adds, or with causal STL block projections, and compare held-out bits per byte:
the recipe stl_recipes.lm_scratch (its docstring: methods, usage, outputs)."""
from stl_recipes.lm_scratch import main

if __name__ == "__main__":
    main()
