"""The mutation check (dev/mutants.py) stays in step with the code: each mutant's text occurs
exactly once in the body of the function it names (found in another file of its tree if it moved). A kernel edit that rewrites a mutated line otherwise turns that mutant
stale and silently drops it from the score."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_mutant_applies_once():
    spec = importlib.util.spec_from_file_location("mutants", os.path.join(ROOT, "dev", "mutants.py"))
    mutants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mutants)
    ids = [m[0] for m in mutants.MUTANTS]
    assert len(ids) == len(set(ids)), "mutant ids repeat"
    stale = {}
    for mid, rel, func, old, new, _ in mutants.MUTANTS:
        try:
            mutants.locate(ROOT, rel, func, old)
        except LookupError as e:
            stale[mid] = str(e)
        if old == new:
            stale[mid] = "the mutant changes nothing"
    assert not stale, f"mutants whose anchor does not match exactly once (id: why): {stale}"
