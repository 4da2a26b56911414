"""stl_torch.cli: the STL flags a script names, with its defaults, parse into the STLConfig the
scripts built by hand before."""
import argparse

import pytest

from stl_torch import STLConfig
from stl_torch.cli import add_stl_args, stl_config_from_args


def test_flags_defaults_and_config():
    p = add_stl_args(argparse.ArgumentParser(), ("tile", "rank", "init", "causal"), init="fitted", causal=True)
    a = p.parse_args([])
    assert (a.tile, a.rank, a.init, a.causal) == (4, 24, "fitted", True)
    assert stl_config_from_args(a) == STLConfig(tile=4, rank=24, init="fitted", causal=True)
    a = p.parse_args(["--tile", "2", "--rank", "7", "--no-causal"])
    assert stl_config_from_args(a, init="strassen") == STLConfig(tile=2, rank=7, init="strassen")


def test_only_named_flags_and_ed_norm_zero():
    p = add_stl_args(argparse.ArgumentParser(), ("rank", "ed_norm"))
    assert not hasattr(p.parse_args([]), "tile")
    assert stl_config_from_args(p.parse_args(["--ed-norm", "0"])).ed_norm is None
    with pytest.raises(ValueError, match="unknown STL flags"):
        add_stl_args(argparse.ArgumentParser(), ("tiles",))
