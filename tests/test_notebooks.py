"""Run every notebook in `nbs/` as a test, through nbdev's runner (no Jupyter kernel).

A notebook's title cell may carry frontmatter read here:
- `requires_data: <name>`: skipped (not failed) when `../shared/data/<name>` is absent;
- `slow: true`: marked `slow`, so `pytest -m "not slow"` leaves it out locally (CI runs it).
Cells flagged `#| slow` are skipped by nbdev's runner (see `tst_flags` in pyproject.toml); their saved outputs
come from full runs (`python tools/run_nbs.py --flags slow`).
"""
import os
from pathlib import Path
import pytest
from fastcore.nbio import read_nb, nb_frontmatter
from nbdev.test import test_nb as run_nb  # aliased so pytest does not collect it

from conftest import ROOT, PETS

NBS = sorted((ROOT/'nbs').glob('*.ipynb'))

def _param(fn):
    fm = nb_frontmatter(read_nb(fn))
    marks = []
    if str(fm.get('slow', '')).lower() == 'true': marks.append(pytest.mark.slow)
    need = fm.get('requires_data')
    if need:
        marks.append(pytest.mark.pets)
        path = PETS if 'pet' in need else ROOT.parent/'shared'/'data'/need
        if not path.exists(): marks.append(pytest.mark.skip(reason=f'needs {path}'))
    return pytest.param(fn, id=fn.name, marks=marks)

@pytest.mark.parametrize('fn', [_param(f) for f in NBS])
def test_notebook(fn):
    # a generous limit per cell: a loaded machine is slower, not wrong (a hung cell still ends)
    ok, secs = run_nb(fn, skip_flags=['slow'], cell_timeout=3600)
    assert ok, f'{fn.name} failed (see the traceback printed above)'
