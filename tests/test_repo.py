"""Fast checks on the repository: generated files are up to date and the packaging is what nbdev 3 expects.

`.ci/run` checks the same things on the real tree; these run in the test suite so they fail locally first.
"""
import os, shutil, subprocess, sys
from pathlib import Path
import pytest

from conftest import ROOT

BIN = Path(sys.executable).parent

def _git(*args, cwd=ROOT, **kw):
    return subprocess.run(['git', *args], cwd=cwd, capture_output=True, text=True, **kw)

needs_git = pytest.mark.skipif(shutil.which('git') is None or _git('rev-parse').returncode != 0,
                               reason='needs a git checkout')

def copy_worktree(dst:Path):
    "Copy the work tree's files (tracked and untracked, not ignored) into `dst` and commit them there"
    files = _git('ls-files', '-z', '--cached', '--others', '--exclude-standard').stdout.split('\0')
    for f in filter(None, files):
        src = ROOT/f
        if src.is_file():
            (dst/f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(src, dst/f)
    env = dict(os.environ, GIT_AUTHOR_NAME='t', GIT_AUTHOR_EMAIL='t@t', GIT_COMMITTER_NAME='t', GIT_COMMITTER_EMAIL='t@t')
    for cmd in (['init', '-q'], ['add', '-A'], ['commit', '-qm', 'snapshot', '--no-verify']):
        r = _git(*cmd, cwd=dst, env=env); assert r.returncode == 0, r.stderr

@needs_git
def test_export_in_sync(tmp_path):
    "`nbdev-export` changes no file: fastai_mtl/ is what the notebooks export (run in a copy, not in place)"
    copy_worktree(tmp_path)
    r = subprocess.run([str(BIN/'nbdev-export')], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    changed = _git('status', '--porcelain', '--untracked-files=all', cwd=tmp_path).stdout
    assert not changed, f'fastai_mtl/ is out of sync with nbs/: run nbdev-export and commit. Changed:\n{changed}'

def test_readme_up_to_date():
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'make_readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

def test_readme_commands():
    "README opens with the two commands a newcomer pastes (.ci/run runs the second one's install and test parts)"
    blocks = [b.split('\n', 1)[1].strip() for b in (ROOT/'README.md').read_text().split('```')[1::2] if b.startswith('bash')]
    assert blocks[:2] == [
        'python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python -m fastai_mtl.demo',
        'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/python -m pytest'], blocks[:2]

def test_packaging():
    "nbdev 3 layout: all settings in pyproject.toml (no settings.ini), and the notebooks' folders exist"
    assert not (ROOT/'settings.ini').exists(), 'settings.ini is nbdev 2; settings live in pyproject.toml [tool.nbdev]'
    try: import tomllib
    except ImportError: tomllib = pytest.importorskip('tomli')  # Python 3.10
    cfg = tomllib.loads((ROOT/'pyproject.toml').read_text())
    nbdev = cfg['tool']['nbdev']
    assert (ROOT/nbdev['nbs_path']).is_dir() and (ROOT/nbdev['lib_path']).is_dir()
    assert (ROOT/nbdev['nbs_path']/nbdev.get('readme_nb', 'index.ipynb')).exists()
    assert cfg['project']['entry-points']['nbdev'] == {cfg['project']['name']: f"{nbdev['lib_path']}._modidx:d"}
    assert os.access(ROOT/'.ci'/'run', os.X_OK), '.ci/run must be executable'

@pytest.mark.skipif(not (ROOT/'fastai_mtl'/'all.py').exists(), reason='fastai_mtl/all.py not written yet')
def test_import_all():
    r = subprocess.run([sys.executable, '-c', 'from fastai_mtl.all import *'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

def test_star_import_shadows_nothing():
    "`from fastai_mtl.all import *` adds names; none of them replaces one of fastai's or torch's with another object"
    import torch, torch.utils.data
    ns_fastai, ns_mtl = {}, {}
    exec('from fastai.vision.all import *', ns_fastai)
    exec('from fastai_mtl.all import *', ns_mtl)
    clashes = [k for k, v in ns_mtl.items() if not k.startswith('__') and k in ns_fastai and ns_fastai[k] is not v]
    assert not clashes, f'fastai_mtl shadows fastai names: {clashes}'
    torch_names = set(dir(torch)) | set(dir(torch.nn)) | set(dir(torch.utils.data))
    ours = [k for k in ns_mtl if k not in ns_fastai and not k.startswith('_')]
    assert not (set(ours) & torch_names), f'fastai_mtl uses torch names: {sorted(set(ours) & torch_names)}'

def test_private_fastai_imports_are_the_known_ones():
    "DEVELOPING.md lists the private fastai names the library relies on; a new one must be added there (and here) on purpose"
    import re
    found = set()
    for f in (ROOT/'fastai_mtl').glob('*.py'):
        for m in re.finditer(r'^\s*from (fastai[\w.]*) import (.+)$', f.read_text(), flags=re.M):
            found |= {f'{m[1]}.{n.strip()}' for n in m[2].split(',') if n.strip().startswith('_')}
    assert found == {'fastai.vision.learner._add_norm', 'fastai.vision.learner._update_first_layer'}, found
    dev = (ROOT/'DEVELOPING.md').read_text()
    assert all(f in dev for f in found)

def test_extras_spelled_as_their_packages_declare_them():
    """Every extra that pyproject.toml asks of a dependency is one the installed package declares, spelled exactly so:
    the pip that `python3 -m venv` brings matches extras by their exact name and installs without an unknown one
    (uv normalises `_` and `-`, so a CI run with uv alone hid this)"""
    from importlib.metadata import distribution, PackageNotFoundError
    from packaging.requirements import Requirement
    try: import tomllib
    except ImportError: tomllib = pytest.importorskip('tomli')  # Python 3.10
    proj = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']
    reqs = [Requirement(r) for r in proj['dependencies'] + [r for v in proj['optional-dependencies'].values() for r in v]]
    checked, bad = 0, []
    for r in reqs:
        if not r.extras: continue
        try: declared = set(distribution(r.name).metadata.get_all('Provides-Extra') or [])
        except PackageNotFoundError: pytest.fail(f'{r.name} (asked with extras {sorted(r.extras)}) is not installed')
        bad += [f'{r.name}[{e}] (it declares {sorted(declared)})' for e in sorted(r.extras) if e not in declared]
        checked += 1
    assert checked, 'no dependency with extras found: the test reads pyproject.toml wrong'
    assert not bad, f'extras that pip would skip: {bad}'
