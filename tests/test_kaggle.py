"""The CPU part of the Kaggle set-up (examples/kaggle_offline.py): the package builds as a wheel, installs with
`--no-deps --no-index` into a fresh environment that already has fastai (and nothing of this checkout), and the
script trains from local backbone weights (a timm and a torchvision state dict), exports and writes a submission.
The GPU part (fp16 on a T4, two GPUs) is in bench/gpu_check.py."""
import os, shutil, subprocess, sys, sysconfig, zipfile
from pathlib import Path
import pandas as pd, pytest, torch
from conftest import ROOT

SCRIPT = ROOT/'examples'/'kaggle_offline.py'

@pytest.fixture(scope='module')
def kaggle_env(tmp_path_factory):
    "`(python, wheel)`: a fresh venv seeing this environment's packages (fastai, torch, timm) but not fastai_mtl, which is installed there from its wheel"
    tmp = tmp_path_factory.mktemp('kaggle')
    src = tmp/'src'                                   # build from a copy: nothing written into the checkout
    files = subprocess.run(['git', 'ls-files', 'fastai_mtl', 'pyproject.toml', 'setup.py', 'README.md', 'LICENSE'], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        (src/f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT/f, src/f)
    wheels = tmp/'wheels'
    r = subprocess.run([sys.executable, '-c', f'from setuptools import build_meta as b; print(b.build_wheel({str(wheels)!r}))'],
                       cwd=src, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = wheels/r.stdout.split()[-1]
    names = zipfile.ZipFile(wheel).namelist()
    assert 'fastai_mtl/learner.py' in names and not any(n.startswith(('tests/', 'nbs/', 'bench/')) for n in names)
    env = tmp/'env'
    subprocess.run([sys.executable, '-m', 'venv', str(env)], check=True, timeout=300)
    py = env/'bin'/'python'
    site = Path(subprocess.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site/'kaggle_image.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')   # "preinstalled": this environment's packages
    r = subprocess.run([str(py), '-c', 'import fastai_mtl'], capture_output=True, text=True, cwd=tmp)
    assert r.returncode != 0 and 'No module named' in r.stderr          # not there before the wheel
    r = subprocess.run([str(py), '-m', 'pip', 'install', '--no-deps', '--no-index', str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return py, tmp

def run_script(py, cwd, *args):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    r = subprocess.run([str(py), str(SCRIPT), '--demo', '--size', '32', '--bs', '16', *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout

def test_wheel_no_deps_local_weights_one_epoch(kaggle_env):
    py, tmp = kaggle_env
    import timm, torchvision
    torch.save(timm.create_model('resnet18', pretrained=False, num_classes=0).state_dict(), tmp/'timm_resnet18.pth')
    torch.save(torchvision.models.resnet18().state_dict(), tmp/'tv_resnet18.pth')
    out = run_script(py, tmp, '--arch', 'timm:resnet18', '--weights', str(tmp/'timm_resnet18.pth'), '--epochs', '1', '--work', 'w1')
    assert f'from {tmp/"env"}' in out                             # the installed wheel, not this checkout
    sub = pd.read_csv(tmp/'w1'/'submission.csv')
    assert len(sub) > 0 and {'mask_circle', 'shape', 'shape_prob', 'box_x1'} <= set(sub.columns)
    assert (tmp/'w1'/'model.pkl').is_file() and (tmp/'w1'/'models'/'weights.safetensors').is_file() and (tmp/'w1'/'cache').is_dir()
    out = run_script(py, tmp, '--arch', 'resnet18', '--weights', str(tmp/'tv_resnet18.pth'), '--epochs', '0', '--work', 'w2')
    assert len(pd.read_csv(tmp/'w2'/'submission.csv')) == len(sub)
