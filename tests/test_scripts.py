"""Every script in examples/, benchmarks/ and dev/ still starts: ``python SCRIPT --help`` exits 0
and prints its usage. It imports the script and everything it imports (stl_torch, stl_recipes,
its sibling modules) and builds its argument parser, so a renamed module or a broken flag fails
here instead of rotting until someone next runs the script. (dev/mutants.py's --help stops before
the mutation run.) A script is a top-level .py file with an ``if __name__ == "__main__":`` block;
the modules beside them (benchmarks/results_file.py) are imported by the scripts."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for d in ("examples", "benchmarks", "dev") for p in (ROOT / d).glob("*.py")
                 if 'if __name__ == "__main__":' in p.read_text())


def _help(script):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def helps():
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(SCRIPTS, pool.map(_help, SCRIPTS)))


def test_scripts_found():
    names = {p.relative_to(ROOT).as_posix() for p in SCRIPTS}
    assert {"examples/demo.py", "examples/t2t_vit_train.py", "benchmarks/bench_linear.py",
            "benchmarks/approx_table.py", "dev/mutants.py"} <= names, names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_script_help(script, helps):
    r = helps[script]
    assert r.returncode == 0, f"{script.name} --help exit {r.returncode}\n{r.stderr[-3000:]}"
    assert f"usage: {script.name}" in r.stdout, r.stdout[:500]
