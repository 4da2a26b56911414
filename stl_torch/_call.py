"""Calling a model on "an input" the way convert/flops/calibration accept it."""
from collections.abc import Mapping


def call_model(model, inputs, **kwargs):
    """``model(**inputs)`` for a mapping (a dict, a tokenizer's ``BatchEncoding``), ``model(*inputs)``
    for a tuple/list, else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs, **kwargs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs, **kwargs)
    return model(inputs, **kwargs)
