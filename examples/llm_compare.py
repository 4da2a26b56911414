#!/usr/bin/env python
"""Fine-tune one pretrained LLM several ways and compare held-out perplexity against training
tokens: the recipe stl_recipes.llm_compare (its docstring: the steps, usage, outputs), each run
made by llama_finetune.py beside this script."""
import os

from stl_recipes.llm_compare import main

if __name__ == "__main__":
    main(recipe=os.path.join(os.path.dirname(os.path.abspath(__file__)), "llama_finetune.py"))
