#!/usr/bin/env python
"""Train T2T-ViT from scratch with every linear layer dense or STL: the recipe
stl_recipes.t2t_vit_recipe (its docstring: usage, data, the t2t-vit-7-imagenet preset, outputs)."""
from stl_recipes.t2t_vit_recipe import main

if __name__ == "__main__":
    main()
