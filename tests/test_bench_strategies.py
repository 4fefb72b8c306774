"Argument handling, the aggregation (exposure, paired intervals) and the results table of bench/strategies.py, on made-up runs (no training, no data)"
import sys
import numpy as np, pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT/'bench'))
import strategies as S  # noqa: E402

def test_parse():
    a = S.parse([])
    assert a.configs == S.CONFIGS and len(S.CONFIGS) == 14 and a.threads == 2 and a.seeds == [0, 1, 2]
    assert {'balanced+upgrad', 'random+equal', 'seg-only=exposure'} <= set(S.CONFIGS)
    q = S.parse(['--quick', '--seeds', '3', '4'])
    assert (q.size, q.epochs, q.seeds, q.configs) == (32, 1, [3], S.QUICK_CONFIGS)
    with pytest.raises(SystemExit): S.parse(['--configs', 'balanced+nope'])
    with pytest.raises(SystemExit): S.parse(['--configs', 'seg-only=exposure'])   # needs the reference's exposure
    with pytest.raises(SystemExit): S.parse(['--configs', 'breed-only=exposure'])
    p = S.parse(['--configs', 'balanced+equal', 'balanced+equal+pseudo', 'breed-only=exposure', '--breed-pct', '0.3'])
    assert p.breed_pct == .3 and 'balanced+equal+pseudo' not in S.CONFIGS and S.EXPOSED['breed-only=exposure'] == 'breed'

def test_pseudo_settings():
    import pseudo as P
    a, rest = P.parse(['--threads', '1'])
    assert a.settings == ['trimaps15', 'breeds30'] and a.seeds == [0, 1, 2] and rest == ['--threads', '1']
    for st in P.SETTINGS.values():
        S.parse(['--configs', *st['configs']])                                   # valid configurations
        assert st['configs'][0] == S.REFERENCE and 'balanced+equal+pseudo' in st['configs']

def fake_run(cfg, seed, right, wall, mem, trimaps=100):
    "`right`: which of 10 test images the breed is right for; trimap confusion matrices from it too"
    alt, w = cfg.split('+') if '+' in cfg else (None, None)
    acc = [[1., 1.] if k < right else [0., 1.] for k in range(10)]
    cms = [[10., 1., 1., 10.] if k < right else [5., 6., 6., 5.] for k in range(10)]
    return dict(config=cfg, seed=seed, sampler=alt, weighting=w, trimap_miou=S._miou(np.sum(cms, 0)), breed_acc=right/10,
                wall_s=wall, cpu_s=wall/2, peak_rss_mb=mem, train_mem_mb=mem/10, batches=90, steps=45 if alt == 'sum' else 90,
                epochs=5, item_stats=dict(breed_acc=acc, trimap_miou=cms),
                exposure=dict(trimap_items=trimaps, trimap_batches=30, breed_items=1400))

def test_aggregate_table():
    runs = [fake_run('balanced+equal', 0, 6, 10, 800), fake_run('balanced+equal', 1, 6, 12, 820),
            fake_run('rounds+equal', 0, 6, 11, 810), fake_run('rounds+equal', 1, 6, 11, 810),
            fake_run('balanced+upgrad', 0, 9, 22, 900, 90), fake_run('balanced+upgrad', 1, 9, 22, 900, 110)]
    rows = S.aggregate(runs, ['balanced+equal', 'rounds+equal', 'balanced+upgrad', 'seg-only'], n_boot=200)
    assert [r['config'] for r in rows] == ['balanced+equal', 'rounds+equal', 'balanced+upgrad']  # configurations without runs left out
    ref, s, u = rows
    assert ref['breed_acc']['mean'] == pytest.approx(.6) and ref['wall_s_ratio'] == 1 and 'breed_acc_diff' not in ref
    assert s['breed_acc_diff']['diff'] == 0 and s['breed_acc_diff']['low'] == s['breed_acc_diff']['high'] == 0   # identical: paired
    assert u['breed_acc_diff']['diff'] == pytest.approx(.3) and u['breed_acc_diff']['low'] > 0
    assert u['trimap_miou_diff']['diff'] > 0 and u['wall_s_ratio'] == pytest.approx(2.)
    assert u['trimap_items']['mean'] == 100 and S.fmt(u['trimap_items'], 0, False) == '100'
    meta = dict(reference='balanced+equal', device='cpu', arch='x', size=48, bs=16, n_train=302, n_masks=45, n_test=298,
                budget_batches=90, seeds=[0, 1], threads=1, load_avg_1min_at_end=1., cpus=2, total_s=1)
    md = S.table(rows, meta)
    assert '| balanced+equal (ref) | 0.' in md and '| balanced+upgrad |' in md and '+0.300 [' in md
    assert md.count('\n| ') == 5  # header, rule, three rows

def test_compare_pets_parse():
    "bench/compare_pets.py reuses this script's data preparation: its arguments carry what `experiment_df` reads"
    import compare_pets as C
    a = C.parse([])
    assert (a.size, a.epochs, a.seeds, a.mask_pct, a.breed_pct) == (64, 4, 3, 0.15, 1.0) and a.n_train is None
    q = C.parse(['--quick'])
    assert (q.size, q.bs, q.epochs, q.seeds, q.n_train, q.n_test) == (32, 4, 1, 2, 48, 24)

# --- bench/mtl_pays.py ---------------------------------------------------------------------------------------------------
def pays_run(setting, cfg, budget, seed, right, wall=10.):
    "A made-up run of bench/mtl_pays.py: the breed right on the first `right` of 10 test images (trimap confusion matrices likewise)"
    import mtl_pays as P
    acc = [[1., 1.] if k < right else [0., 1.] for k in range(10)]
    cms = [[10., 1., 1., 10.] if k < right else [5., 6., 6., 5.] for k in range(10)]
    tasks = [t for t in ('trimap', 'breed') if cfg in ('mtl', f'alone-{t}') or cfg.startswith('mtl,')]
    stats = {P.METRIC[t]: (cms if t == 'trimap' else acc) for t in tasks}
    vals = {'trimap_miou': S._miou(np.sum(cms, 0)) if 'trimap' in tasks else None, 'breed_acc': right/10 if 'breed' in tasks else None}
    return dict(setting=setting, config=cfg, budget=budget, seed=seed, wall_s=wall, steps=budget, head_iou=None,
                exposure={f'{t}_items': budget*16 for t in tasks}, item_stats=stats, **vals)

def test_mtl_pays_configs_and_summary(tmp_path):
    import mtl_pays as P
    assert P.parse_config('mtl') == ('mtl', {}) and P.parse_config('mtl,share=0.5,aux=2') == ('mtl', {'share': '0.5', 'aux': '2'})
    for bad in ('mtl,nope=1', 'alone-trimap,share=0.5', 'both'):
        with pytest.raises(ValueError): P.parse_config(bad)
    with pytest.raises(SystemExit): P.parse(['--configs', 'mtl,nope=1'])
    q = P.parse(['--quick'])
    assert (q.size, q.budgets, q.seeds, q.settings) == (32, [2], [0], ['trimaps15'])
    rows = []
    for seed in (0, 1):
        rows += [pays_run('trimaps15', 'alone-trimap', 50, seed, 4), pays_run('trimaps15', 'alone-trimap', 150, seed, 10),
                 pays_run('trimaps15', 'alone-breed', 50, seed, 5), pays_run('trimaps15', 'alone-breed', 150, seed, 5),
                 pays_run('trimaps15', 'mtl', 50, seed, 8, wall=15.), pays_run('trimaps15', 'mtl', 150, seed, 5, wall=15.),
                 pays_run('trimaps15', 'mtl,share=0.25', 150, seed, 6, wall=20.)]   # a recipe tried, not in the timing pass
    cmp = {(r['budget'], r['task']): r for r in P.compare(rows, 'mtl', n_boot=200)}
    t50, b150 = cmp[(50, 'trimap')], cmp[(150, 'breed')]
    assert t50['rare'] and t50['diff'] > 0 and t50['low'] > 0 and P.verdict(t50) == 'better'     # 8 right against 4, every seed
    assert t50['best_budgets'] == [150, 150] and t50['best_alone'] > t50['mtl'] and t50['diff_best'] < 0   # alone at 150 is better still
    assert cmp[(150, 'trimap')]['high'] < 0 and P.verdict(cmp[(150, 'trimap')]) == 'worse'
    assert b150['diff'] == 0 and b150['low'] == b150['high'] == 0 and P.verdict(b150) == 'no clear difference'   # identical: paired
    assert t50['wall_ratio'] == pytest.approx(1.5) and t50['exposure_alone'] == 800
    timing = [pays_run('trimaps15', 'alone-trimap', 150, 0, 5, wall=10.), pays_run('trimaps15', 'mtl', 150, 0, 5, wall=12.)]
    res = P.summarise(rows, tmp_path/'pays.jsonl', n_boot=100, timing=timing)
    md = (tmp_path/'pays.md').read_text()
    assert '| trimaps15 | 50 | trimap (rare) |' in md and 'better' in md and len(res['default']) == 4 and 'timing pass' in md
    by = {(r['budget'], r['task']): r for r in res['default']}
    assert by[(50, 'trimap')]['wall_ratio'] == pytest.approx(1.2) and by[(50, 'breed')]['wall_ratio'] == pytest.approx(1.5)  # no breed timing: the pool's
    assert by[(50, 'trimap')]['wall_from'] == 'timing pass, budget 150' and by[(50, 'breed')]['wall_from'] == 'pool'
    tried = {(r['budget'], r['task']): r for r in res['tried']['mtl,share=0.25']}
    assert tried[(150, 'trimap')]['wall_from'] == 'pool' and tried[(150, 'trimap')]['wall_ratio'] == pytest.approx(2.)   # 20 s / 10 s
    assert '| x2.00* |' in md
