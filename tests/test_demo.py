"The README's first command: `python -m fastai_mtl.demo` runs as a program (quick mode), prints metrics, writes a PNG"
import subprocess, sys
import pytest
from PIL import Image

def _demo(*args, cwd):
    return subprocess.run([sys.executable, '-m', 'fastai_mtl.demo', *args], cwd=cwd, capture_output=True, text=True, timeout=600)

def test_demo_quick_cli(tmp_path):
    r = _demo('--quick', '--out', 'pics/demo.png', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for k in ('mask_miou', 'shape_acc', 'colour_acc', 'box_iou', 'constant baseline'): assert k in r.stdout, r.stdout[-2000:]
    png = tmp_path/'pics'/'demo.png'
    w, h = Image.open(png).size
    assert w > 300 and h > w          # a column of targets and one of predictions, a row per image
    assert 'Traceback' not in r.stderr

def test_demo_bad_data_path(tmp_path):
    r = _demo('--data', str(tmp_path/'nowhere'), cwd=tmp_path)
    assert r.returncode == 2 and 'no images/ folder' in r.stderr

@pytest.mark.slow
def test_demo_quick_pets(tmp_path, pets_path):
    r = _demo('--quick', '--data', str(pets_path), '--out', 'pets.png', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for k in ('trimap_miou', 'breed_acc', 'head_iou'): assert k in r.stdout, r.stdout[-2000:]
    assert (tmp_path/'pets.png').exists()
