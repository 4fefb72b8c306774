"Argument handling and the results table of bench/strategies.py, on made-up runs (no training, no data)"
import sys
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT/'bench'))
import strategies as S  # noqa: E402

def test_parse():
    a = S.parse([])
    assert a.configs == S.CONFIGS and len(S.CONFIGS) == 14 and a.threads == 1 and a.seeds == [0, 1]
    q = S.parse(['--quick', '--seeds', '3', '4'])
    assert (q.size, q.epochs, q.seeds, q.configs) == (32, 1, [3], S.QUICK_CONFIGS)
    with pytest.raises(SystemExit): S.parse(['--configs', 'mixed+nope'])

def fake_run(cfg, seed, miou, acc, wall, mem):
    alt, w = cfg.split('+') if '+' in cfg else (None, None)
    return dict(config=cfg, seed=seed, alternation=alt, weighting=w, trimap_miou=miou, breed_acc=acc, wall_s=wall,
                cpu_s=wall/2, peak_rss_mb=mem, train_mem_mb=mem/10, batches=90, steps=45 if alt == 'sum' else 90, epochs=5)

def test_aggregate_table():
    runs = [fake_run('mixed+equal', 0, .6, .5, 10, 800), fake_run('mixed+equal', 1, .7, .4, 12, 820),
            fake_run('sum+dwa', 0, .65, .45, 11, 810), fake_run('sum+dwa', 1, .65, .55, 11, 810),
            fake_run('breed-only', 0, None, .6, 5, 700), fake_run('breed-only', 1, None, .5, 6, 700)]
    rows = S.aggregate(runs, ['mixed+equal', 'sum+dwa', 'breed-only', 'seg-only'])
    assert [r['config'] for r in rows] == ['mixed+equal', 'sum+dwa', 'breed-only']  # configurations without runs left out
    ref, s, b = rows
    assert ref['trimap_miou']['mean'] == pytest.approx(.65) and ref['wall_s_ratio'] == 1
    assert s['wall_s_ratio'] == pytest.approx(1.) and s['peak_rss_mb_ratio'] == pytest.approx(810/810)
    assert b['wall_s_ratio'] == pytest.approx(5.5/11) and b['trimap_miou']['mean'] is None
    assert S.fmt(ref['trimap_miou']) == '0.650 ± 0.050' and S.fmt(b['trimap_miou']) == '—'
    meta = dict(reference='mixed+equal', device='cpu', arch='x', size=48, bs=16, n_train=302, n_masks=45, n_test=298,
                budget_batches=90, seeds=[0, 1], threads=1, load_avg_1min_at_end=1., cpus=2, total_s=1)
    md = S.table(rows, meta)
    assert '| mixed+equal (ref) | 0.650 ± 0.050 | 0.450 ± 0.050 |' in md
    assert '| breed-only | — | 0.550 ± 0.050 |' in md and md.count('\n| ') == 5  # header, rule, three rows
