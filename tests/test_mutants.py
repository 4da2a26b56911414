"""The mutation check (dev/mutants.py) stays in step with the code: each mutant's text occurs
exactly once in its file. A kernel edit that rewrites a mutated line otherwise turns that mutant
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
    for mid, rel, old, new, _ in mutants.MUTANTS:
        with open(os.path.join(ROOT, rel)) as f:
            n = f.read().count(old)
        if n != 1 or old == new:
            stale[mid] = n
    assert not stale, f"mutants whose text does not occur exactly once (id: count): {stale}"
