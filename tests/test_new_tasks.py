"MultiLabelTask and RegressionTask end to end: every weighting, sampler and architecture; they learn; predict, export, show."
import numpy as np, pandas as pd, pytest, torch
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from fastai.vision.all import set_seed, load_learner, ProgressCallback
from fastai_mtl.synth import synth_shapes, SHAPE_CODES
from fastai_mtl.tasks import SegmentationTask, MultiLabelTask, RegressionTask
from fastai_mtl.data import MTLDataLoaders
from fastai_mtl.learner import mtl_learner
from fastai_mtl.weighting import weightings
from fastai_mtl.samplers import samplers
from fastai_mtl.model import architectures
from fastai_mtl.demo import demo_body

pytestmark = pytest.mark.usefixtures('one_thread')

def tags_and_values(n=240, seed=2):
    "Synthetic shapes with tags (colour + 'big' for large shapes; 'none' on some: labelled, no tag) and two values (area, centre x)"
    path, df = synth_shapes(n, size=32, seed=seed, missing={'mask': 0.5})
    area = (df.x2 - df.x1)*(df.y2 - df.y1)/32**2
    big = area > area.median()
    df['tags'] = [f'{c} big' if b else c for c, b in zip(df.colour, big)]
    rng = np.random.default_rng(seed)
    df.loc[rng.random(n) < 0.1, 'tags'] = 'none'
    df['area'], df['cx'] = area, (df.x1 + df.x2)/2/32
    df.loc[rng.random(n) < 0.3, 'tags'] = None              # missing: left out
    gone = rng.random(n) < 0.3
    df.loc[gone, 'area'] = np.nan; df.loc[gone, 'cx'] = np.nan
    return path, df

@pytest.fixture(scope='module')
def data():
    path, df = tags_and_values()
    tasks = [MultiLabelTask('tags'), RegressionTask(['area', 'cx'], name='geom'), SegmentationTask('mask', SHAPE_CODES, decoder='light')]
    return path, df, MTLDataLoaders.from_df(df, path, 'fn', tasks, valid_col='is_valid', bs=16, num_workers=0)

def learner(dls, **kw):
    learn = mtl_learner(dls, demo_body(widths=(16, 32, 64)), pretrained=False, **kw)
    learn.remove_cb(ProgressCallback)
    return learn

def test_batches(data):
    _, df, dls = data
    x, tags, geom, mask = dls.one_batch()
    assert tags.shape == (16, len(dls.tasks[0].vocab)) and geom.shape == (16, 2)
    assert set(dls.tasks[0].vocab) >= {'big', 'red'} and 'none' not in dls.tasks[0].vocab
    t = dls.tasks[0]
    lab = t.item_mask(tags)
    assert (tags[lab].isnan().sum() == 0) and tags[~lab].isnan().all()
    v = dls.valid
    rows = v.items
    i = int(np.flatnonzero((rows.tags == 'none').values)[0])
    y = v.do_item(i)[1]
    assert (y == 0).all()

@pytest.mark.parametrize('weighting', [None, *weightings])
def test_every_weighting(data, weighting):
    set_seed(0)
    learn = learner(data[2], weighting=weighting)
    with learn.no_logging(): learn.fit(1, 3e-3)
    vals = dict(zip(['valid_loss'] + [m.name for m in learn.metrics], learn.validate()))
    assert np.isfinite(vals['valid_loss']) and all(vals[k] is not None for k in ('tags_acc_multi', 'tags_f1', 'geom_mae', 'geom_r2'))

@pytest.mark.parametrize('sampler', list(samplers))
def test_every_sampler(data, sampler):
    set_seed(0)
    learn = learner(data[2], sampler=sampler)
    with learn.no_logging(): learn.fit(1, 3e-3)
    assert np.isfinite(learn.recorder.values[-1][0])

@pytest.mark.parametrize('architecture', list(architectures))
def test_every_architecture(data, architecture):
    set_seed(0)
    learn = learner(data[2], architecture=architecture)
    with learn.no_logging(): learn.fit(1, 3e-3)
    assert np.isfinite(learn.recorder.values[-1][0])

def test_they_learn_predict_export_show(tmp_path):
    path, df = tags_and_values(400)
    tasks = [MultiLabelTask('tags'), RegressionTask(['area', 'cx'], name='geom'), SegmentationTask('mask', SHAPE_CODES, decoder='light')]
    dls = MTLDataLoaders.from_df(df, path, 'fn', tasks, valid_col='is_valid', bs=16, num_workers=0)
    set_seed(0, reproducible=True)
    learn = learner(dls)
    with learn.no_logging(): learn.fit_one_cycle(8, 1e-2)
    vals = dict(zip(['valid_loss'] + [m.name for m in learn.metrics], learn.validate()))
    base = learn.baseline()
    assert vals['tags_f1'] > base['tags_f1'] + 0.15, (vals, base)
    assert vals['geom_r2'] > 0.4 and vals['geom_mae'] < 0.7*base['geom_mae'], (vals, base)
    fn = path/df.fn[df.is_valid].iloc[0]
    res = learn.predict(fn)
    tags, probs = res['tags']
    assert isinstance(tags, list) and probs.shape == (len(dls.tasks[0].vocab),) and set(res['geom']) == {'area', 'cx'}
    learn.export(tmp_path/'m.pkl')
    res2 = load_learner(tmp_path/'m.pkl').predict(fn)
    assert res2['tags'][0] == tags and torch.allclose(res2['tags'][1], probs) and res2['geom'] == pytest.approx(res['geom'])
    learn.show_results(max_n=2)
    titles = [ax.get_title(loc='left') for ax in plt.gcf().axes]
    assert any('tags:' in t for t in titles) and any('geom:' in t for t in titles)
    plt.close('all')
