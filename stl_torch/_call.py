"""Calling a model on "an input" the way convert/flops/calibration accept it."""
from collections.abc import Mapping


def split_inputs(inputs):
    """``(args, kwargs)``: a mapping (a dict, a tokenizer's ``BatchEncoding``) gives keyword arguments, a
    tuple/list positional ones, anything else is the one positional argument."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def call_model(model, inputs, **kwargs):
    """``model(**inputs)`` for a mapping, ``model(*inputs)`` for a tuple/list, else ``model(inputs)``."""
    args, kw = split_inputs(inputs)
    return model(*args, **kw, **kwargs)
