"""Command-line flags for an ``STLConfig``, one definition for every script that takes them.

    add_stl_args(parser, ("tile", "rank", "init"), init="strassen")   # --tile 4 --rank 24 --init strassen
    cfg = stl_config_from_args(parser.parse_args())                   # STLConfig(tile=..., ...)

A script names the flags it takes and only the defaults where it differs from ``STLConfig``'s.
"""
import argparse
from dataclasses import fields

from .config import STLConfig
from .init import INITS

__all__ = ["add_stl_args", "stl_config_from_args", "STL_FLAGS"]

# field -> (argparse keywords, help); the default comes from STLConfig unless the script overrides it
STL_FLAGS = {
    "tile": (dict(type=int), "STL tile size t"),
    "rank": (dict(type=int), "STL rank r (products per tile)"),
    "init": (dict(), "STL encoder/decoder init: " + ", ".join(INITS)),
    "causal": (dict(action=argparse.BooleanOptionalAction),
               "causal STL: no output depends on a later token of its tile (--no-causal: not causal)"),
    "ed_norm": (dict(type=float), "norm of each product's E row and D column, Wt takes the scale "
                                  "(0: the decomposition's balanced scale)"),
}
_DEFAULTS = {f.name: f.default for f in fields(STLConfig)}


def add_stl_args(parser, flags=("tile", "rank"), help_text=None, **defaults):
    """Adds ``--tile``, ``--rank``, ``--init``, ``--causal``, ``--ed-norm`` (the ``flags`` named, in
    that order) to ``parser`` (or an argument group). ``defaults`` override ``STLConfig``'s,
    ``help_text`` (field -> text) a flag's help text."""
    unknown = [k for k in (*flags, *defaults, *(help_text or {})) if k not in STL_FLAGS]
    if unknown:
        raise ValueError(f"add_stl_args: unknown STL flags {unknown}; valid: {', '.join(STL_FLAGS)}")
    for name in flags:
        kw, text = STL_FLAGS[name]
        parser.add_argument("--" + name.replace("_", "-"), default=defaults.get(name, _DEFAULTS[name]),
                            help=(help_text or {}).get(name, text), **kw)
    return parser


def stl_config_from_args(args, **overrides):
    """The ``STLConfig`` of the STL flags present in ``args`` (others keep ``STLConfig``'s
    defaults), with ``overrides`` on top. ``--ed-norm 0`` means ``ed_norm=None``."""
    kw = {name: getattr(args, name) for name in STL_FLAGS if hasattr(args, name)}
    if "ed_norm" in kw:
        kw["ed_norm"] = kw["ed_norm"] or None
    return STLConfig(**{**kw, **overrides})
