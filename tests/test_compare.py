"compare_tasks and paired_bootstrap: intervals computed by hand (items and seeds resampled), the control reproducing A alone bit for bit, equal exposure."
import numpy as np, pandas as pd, pytest, torch
import matplotlib.pyplot as plt
from fastai.vision.all import set_seed
from fastai_mtl.compare import paired_bootstrap, compare_tasks, plot_task_comparison
from fastai_mtl.synth import synth_shapes, SHAPE_CODES
from fastai_mtl.tasks import SegmentationTask, ClassificationTask, BoxTask
from fastai_mtl.data import MTLDataLoaders
from fastai_mtl.demo import demo_body

pytestmark = pytest.mark.usefixtures('one_thread')

def acc(s): return None if s[1] == 0 else s[0]/s[1]

def test_paired_bootstrap_by_hand_with_seeds():
    rng = np.random.default_rng(0)
    def runs(p): return [np.stack([(rng.random(30) < p).astype(float), np.ones(30)], 1) for _ in range(3)]
    stats = {'a': runs(.5), 'b': runs(.7)}
    res = paired_bootstrap(stats, acc, n_boot=300, seed=7)
    g, va, vb = np.random.default_rng(7), [], []
    for _ in range(300):   # the documented draws: items, then seeds; the same for both configurations
        items, seeds = g.integers(0, 30, 30), g.integers(0, 3, 3)
        va.append(np.mean([stats['a'][s][items, 0].sum()/stats['a'][s][items, 1].sum() for s in seeds]))
        vb.append(np.mean([stats['b'][s][items, 0].sum()/stats['b'][s][items, 1].sum() for s in seeds]))
    d = np.array(vb) - np.array(va)
    assert res.loc['b', 'value'] == pytest.approx(np.mean([s[:, 0].mean() for s in stats['b']]))
    assert res.loc['b', ['diff_low', 'diff_high']].tolist() == pytest.approx(np.percentile(d, [2.5, 97.5]).tolist())
    assert res.loc['a', ['ci_low', 'ci_high']].tolist() == pytest.approx(np.percentile(va, [2.5, 97.5]).tolist())
    assert res.loc['b', 'p_le_0'] == pytest.approx(np.mean(d <= 0))

def test_paired_bootstrap_unlabelled_replicates_and_reference():
    stats = {'x': [np.array([[1., 1.], [0., 0.]])], 'y': [np.array([[0., 1.], [0., 0.]])]}
    res = paired_bootstrap(stats, acc, ref='y', n_boot=200)   # some replicates draw only the unlabelled item: skipped
    assert res.loc['x', 'diff'] == 1 and res.loc['y', 'diff'] == 0 and np.isfinite(res.loc['x', 'diff_low'])
    with pytest.raises(ValueError, match='seeds x'): paired_bootstrap({'x': stats['x'], 'y': stats['y']*2}, acc)

def test_compare_tasks_same_batches_and_exact_control():
    path, df = synth_shapes(96, size=32, seed=5, missing={'mask': 0.5, 'box': 0.3})
    tasks = [SegmentationTask('mask', SHAPE_CODES, decoder='light'), ClassificationTask('colour'), BoxTask()]
    dls = MTLDataLoaders.from_df(df, path, 'fn', tasks, valid_col='is_valid', bs=16, num_workers=0)
    set_seed(0)   # the body passed as a module is copied for every run: its weights are where all of them start
    res = compare_tasks(dls, 'box', 'colour', arch=demo_body(widths=(8, 16)), pretrained=False, seeds=[0, 3], epochs=2,
                        lr=1e-2, n_boot=100, plot=False)   # the box IoU: continuous, no ties by chance
    assert set(res.index.get_level_values('metric')) == {'box_iou'}
    r = res.loc['box_iou']
    ctrl, alone, both, same = 'box + colour head, no colour labels', 'box alone, same batches', 'box + colour', 'box alone, same steps'
    assert list(r.index) == [same, both, alone, ctrl]
    assert r.loc[ctrl, 'value'] == r.loc[alone, 'value']            # bit for bit: only B's labels differ
    assert r.loc[both, 'value'] != r.loc[alone, 'value']            # B's labels do change A here
    assert r.loc[[both, alone, ctrl], 'box_items'].nunique() == 1 and r.loc[[both, alone, ctrl], 'box_batches'].nunique() == 1
    assert r.loc[ctrl, 'colour_items'] == 0 and r.loc[both, 'colour_items'] > 0
    # equal compute: as many optimiser steps, every batch full of boxes (70% of the rows have one)
    assert r['steps'].nunique() == 1 and res.attrs['steps'][same] == res.attrs['steps'][both] == [2*len(dls.train)]*2
    assert r.loc[same, 'box_items'] == r.loc[same, 'box_batches'] * 16 > r.loc[both, 'box_items']
    assert res.attrs['seeds'] == [0, 3] and (res['seeds'] == 2).all()
    fig = plot_task_comparison(res)                                  # what `plot=True` (the default) draws
    assert [a.get_xlabel() for a in fig.axes][:2] == ['box_iou', 'box_iou: difference to box alone, same steps (95% interval)']
    plt.close(fig)
    with pytest.raises(ValueError, match="unknown task 'nope'"): compare_tasks(dls, 'nope', 'colour', plot=False)

def test_alone_as_long_as_it_needs_keeps_the_best_budget(monkeypatch):
    "The best-of-budgets configuration keeps, per seed, the budget whose validation metric is best, and measures it on `test_dl`"
    path, df = synth_shapes(64, size=32, seed=6, missing={'mask': 0.5})
    dls = MTLDataLoaders.from_df(df, path, 'fn', [SegmentationTask('mask', SHAPE_CODES, decoder='light'), ClassificationTask('colour')],
                                 valid_col='is_valid', bs=16, num_workers=0)
    res = compare_tasks(dls, 'colour', 'mask', arch=demo_body(widths=(8, 16)), pretrained=False, seeds=[0, 1], epochs=1, n_boot=50,
                        plot=False, alone_budgets=(3,), test_dl=dls.valid)
    r = res.loc['colour_acc']
    best, same = 'colour alone, best of x1/x3 steps', 'colour alone, same steps'
    n = len(dls.train)
    picked, sel = res.attrs['alone_budgets'], res.attrs['alone_selection']['colour_acc']
    assert set(sel) == {1, 3} and len(picked) == 2
    for j, m in enumerate(picked):
        assert sel[m][j] == max(sel[1][j], sel[3][j])             # the budget with the better validation accuracy
        assert res.attrs['steps'][best][j] == m * n               # ... and its steps
    # measured on `test_dl` (here the validation set again): the mean over seeds of the kept runs
    assert r.loc[best, 'value'] == pytest.approx(np.mean([sel[m][j] for j, m in enumerate(picked)]))
    assert r.loc[same, 'value'] == pytest.approx(np.mean(sel[1]))
