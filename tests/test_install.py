"""`fastai_mtl.core.check_install` turns a broken torch/torchvision install into an `ImportError` saying what to do.

Each case imports `fastai_mtl.core` in a fresh interpreter where a fake package, placed first on `PYTHONPATH`,
fails on import the way a broken install does.
"""
import os, subprocess, sys
from pathlib import Path
import pytest

from conftest import ROOT

def import_core_with_fake(tmp_path:Path, pkg:str, body:str):
    "Run `import fastai_mtl.core` with a fake `pkg` whose `__init__` is `body`; returns the finished process"
    (tmp_path/pkg).mkdir()
    (tmp_path/pkg/'__init__.py').write_text(body)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    return subprocess.run([sys.executable, '-c', 'import fastai_mtl.core'], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)

def last_error(stderr:str) -> str:
    "The final exception line of a traceback, with the lines of its message that follow it"
    lines = stderr.strip().splitlines()
    i = max(i for i, l in enumerate(lines) if l and not l[0].isspace() and ':' in l and 'Error' in l.split(':')[0])
    return '\n'.join(lines[i:])

def test_broken_torchvision(tmp_path):
    r = import_core_with_fake(tmp_path, 'torchvision', 'raise RuntimeError("operator torchvision::nms does not exist")')
    assert r.returncode != 0
    err = last_error(r.stderr)
    assert err.startswith('ImportError: torchvision could not be imported'), r.stderr
    assert 'operator torchvision::nms does not exist' in err          # the original cause is shown
    assert 'torch and torchvision must come from the same build' in err
    assert 'install both from one source' in err and 'pip install' in err

def test_missing_torch(tmp_path):
    r = import_core_with_fake(tmp_path, 'torch', 'raise ImportError("No module named torch")')
    assert r.returncode != 0
    err = last_error(r.stderr)
    assert err.startswith('ImportError: fastai_mtl needs PyTorch'), r.stderr
    assert 'pip install torch torchvision' in err
