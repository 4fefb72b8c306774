"bench/gpu_check.py: says there is nothing to measure without CUDA, and its --smoke run (CPU, fp32) goes end to end"
import json, subprocess, sys
import pytest, torch
from conftest import ROOT

SCRIPT = ROOT/'bench'/'gpu_check.py'

@pytest.mark.skipif(torch.cuda.is_available(), reason='on a CUDA machine the script measures for real')
def test_no_cuda_no_measurement(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), '--out', str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and 'no CUDA device' in r.stdout
    assert not list(tmp_path.iterdir())

@pytest.mark.slow
def test_smoke_run(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), '--smoke', '--out', str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads((tmp_path/'gpu_check_smoke.json').read_text())
    assert {(x['architecture'], x['channels_last']) for x in res['rows']} >= {('hard', False), ('hard', True), ('cross_stitch', False)}
    for x in res['rows']:
        assert x['error'] is None and x['params_finite'] and x['train_images_per_s'] > 0
        assert 0 <= x['metrics']['mask_miou'] <= 1
    assert [x['pipeline'] for x in res['loaders']] == ['fastai DataBlock (image + mask, masked rows)', 'fastai_mtl cached (all targets)']
