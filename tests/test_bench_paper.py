"Arguments, the missing-data exit, the bootstrap statistics and the table of bench/paper_table.py, on made-up results (no training)"
import subprocess, sys
import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT/'bench'))
import paper_table as PT  # noqa: E402

def test_parse(tmp_path):
    a = PT.parse(['--out', str(tmp_path)])
    assert a.models == list(PT.MODELS) and (a.size, a.epochs, a.threads, a.baseline_seeds) == (112, 3, 1, [1])
    assert not a.quick and not a.in_process
    q = PT.parse(['--quick', '--size', '48'])   # flags given explicitly win over the quick settings
    assert (q.size, q.epochs, q.n_train, q.models, q.baseline_seeds, q.in_process) == (48, 1, 24, PT.QUICK['models'], [], True)
    assert q.out != PT.RESULTS and q.out.is_dir()   # a temporary folder, never over the real results
    q.out.rmdir()
    with pytest.raises(SystemExit): PT.parse(['--models', 'nope'])

def test_missing_data(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT/'bench'/'paper_table.py'), '--data', str(tmp_path/'none'), '--out', str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode != 0 and 'no Oxford-IIIT Pet layout' in out.stderr and '--data' in out.stderr
    assert not (tmp_path/'paper_table.json').exists()

def fake_row(model, cms, box=None, acc=None):
    "A result row with per-image confusion matrices `cms` (n, 2, 2) on test (and the same on valid)"
    miou = PT.miou_of(np.array(cms), slice(None))
    per = {'trimap': cms, **({'head': box} if box is not None else {}), **({'species': acc} if acc is not None else {})}
    m = {'miou': miou, **({'box_iou': float(np.mean(box))} if box is not None else {}), **({'acc': float(np.mean(acc))} if acc is not None else {})}
    return dict(model=model, label=PT.MODELS[model.split('@')[0]][0], n_params=1e6, train_wall_s=10., train_cpu_s=5.,
                metrics={s: dict(m) for s in ('train', 'valid', 'test')}, per_image={'valid': per, 'test': per})

def test_uncertainty_table():
    rng = np.random.default_rng(0)
    def cms(good):   # per image: [[pet right, pet wrong], [background wrong, background right]]
        return [[[int(rng.integers(50, 100)), int(rng.integers(0, 10) + 20*(1-good))], [int(rng.integers(0, 10)), int(rng.integers(50, 100))]] for _ in range(40)]
    base = cms(0)
    assert PT.miou_of(np.array([[[3, 1], [1, 5]]]), slice(None)) == pytest.approx((3/5 + 5/7)/2)
    rows = {'baseline': fake_row('baseline', base), 'baseline@1': fake_row('baseline@1', base),
            'cross_stitch': fake_row('cross_stitch', cms(1), box=list(rng.uniform(.2, .8, 40)), acc=[1]*30 + [0]*10)}
    PT.uncertainty(rows)
    same, better = rows['baseline@1']['uncertainty'], rows['cross_stitch']['uncertainty']
    assert same['miou_delta'] == 0 and same['miou_delta_ci95'] == [0, 0]   # paired: identical models, no spread
    assert better['miou_delta'] > 0 and better['miou_delta_ci95'][0] > 0
    assert 'miou_delta' not in rows['baseline']['uncertainty'] and rows['baseline']['uncertainty']['miou_se'] > 0
    assert better['acc_se'] == pytest.approx(np.sqrt(.75*.25/40), rel=.25)   # bootstrap ≈ binomial standard error
    meta = dict(data='pets', backbone='b', size=112, freeze_epochs=1, epochs=3, bs=16, device='cpu', threads=1, seed=0,
                n_images=dict(train=252, valid=50, test=298), total_s=1., load_avg_1min_at_end=1., cpus=2)
    md = PT.table(rows, meta)
    lines = [l for l in md.splitlines() if l.startswith('| (')]
    assert len(lines) == 3 and '0.813 (baseline)' in lines[0] and '| 0.812 (full MTL) | 0.759 | 0.916 |' in lines[2]
    assert lines[1].endswith('| — | — | — |')   # another seed of the baseline: no paper numbers
    assert f"{better['miou_delta']:+.3f}" in lines[2] and '0.750 ±' in lines[2]
