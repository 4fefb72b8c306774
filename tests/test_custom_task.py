"""A `Task` written outside the package (an ordinal score: small / medium / large shapes) trains end to end without
touching library code, with every kind of check the built-in tasks get; malformed tasks are refused at DataLoaders
creation with a message naming what is missing."""
import numpy as np, pandas as pd, pytest, torch
import torch.nn.functional as F
from torch import nn
from fastai.vision.all import (Transform, TransformBlock, TensorBase, set_seed, tensor, load_learner, ProgressCallback)
from fastai_mtl.core import Task, MTLDataError, is_missing
from fastai_mtl.transforms import ColGetter
from fastai_mtl.losses import MaskedLoss, masked_mean
from fastai_mtl.metrics import TaskMetric
from fastai_mtl.layers import SpatialHead
from fastai_mtl.loader import MTLDataLoader
from fastai_mtl.tasks import ClassificationTask
from fastai_mtl.data import MTLDataLoaders
from fastai_mtl.learner import mtl_learner
from fastai_mtl.synth import synth_shapes
from fastai_mtl.demo import demo_body

pytestmark = pytest.mark.usefixtures('one_thread')
LEVELS = ['small', 'medium', 'large']

class LevelReader(Transform):
    "A level name -> its index; missing -> -1"
    def encodes(self, o):
        if o is None or is_missing(o): return TensorBase(tensor(-1))
        if o not in LEVELS: raise MTLDataError(f'{o!r} is not one of the levels {LEVELS}')
        return TensorBase(tensor(LEVELS.index(o)))

class CumulativeBCE(MaskedLoss):
    "Ordinal loss: one binary cross-entropy per threshold `level > k`, on the labelled samples"
    def masked_loss(self, pred, targ, m, n):
        k = torch.arange(pred.shape[1], device=pred.device)
        t = (targ.clamp_min(0)[:, None] > k).float()
        return masked_mean(F.binary_cross_entropy_with_logits(pred.float(), t, reduction='none').mean(1), m)

class LevelMAE(TaskMetric):
    suffix = 'mae'
    def item_stats(self, pred, targ):
        m = self.is_labelled(targ)
        err = ((pred > 0).sum(1) - targ.clamp_min(0)).abs().float()
        return torch.stack([torch.where(m, err, 0.), m.float()], -1)

class OrdinalTask(Task):
    kind, sentinel, n_out = 'ordinal', -1, len(LEVELS) - 1
    def __init__(self, col, name=None): super().__init__(name or col); self.col = col
    @property
    def cols(self): return [self.col]
    def getter(self, path=None): return ColGetter(self.col)
    @property
    def block(self): return TransformBlock(type_tfms=LevelReader(), dl_type=MTLDataLoader)
    def create_head(self, nf, features=None, **kwargs): return SpatialHead(nf, self.n_out, features)
    def loss(self, pred, targ): return CumulativeBCE()(pred, targ, self.item_mask(targ))
    def metrics(self, i): return [LevelMAE(i, self.item_mask, task=self.name)]
    def constant_pred(self, targ):
        t = targ[self.item_mask(targ)]
        med = int(t.median()) if len(t) else 0
        return torch.tensor([10. if med > k else -10. for k in range(self.n_out)])
    def decodes(self, pred): return TensorBase((pred > 0).sum(-1))
    def to_source(self, act, frame=None): return LEVELS[int((act > 0).sum())]
    def show(self, o, ctx=None, pred=False, **kwargs):
        v = int(o)
        return f'{self.name}: ' + ('—' if v < 0 else LEVELS[v])

def sized_shapes(n=500):
    path, df = synth_shapes(n, size=32, seed=11, missing={'colour': 0.3})
    area = (df.x2 - df.x1)*(df.y2 - df.y1)
    df['size'] = pd.cut(area, [-1, area.quantile(1/3), area.quantile(2/3), 1e9], labels=LEVELS).astype(object)
    df.loc[df.sample(frac=0.25, random_state=1).index, 'size'] = None
    return path, df

def test_own_task_end_to_end(tmp_path):
    path, df = sized_shapes()
    dls = MTLDataLoaders.from_df(df, path, 'fn', [OrdinalTask('size'), ClassificationTask('colour')], valid_col='is_valid',
                                 bs=16, num_workers=0)
    x, lv, sh = dls.one_batch()
    assert dls.tasks[0].has_target(lv).sum() == (lv >= 0).sum()
    set_seed(0, reproducible=True)
    learn = mtl_learner(dls, demo_body(widths=(16, 32, 64)), pretrained=False, weighting='dwa')
    learn.remove_cb(ProgressCallback)
    with learn.no_logging(): learn.fit_one_cycle(6, 1e-2)
    vals = dict(zip(['valid_loss'] + [m.name for m in learn.metrics], learn.validate()))
    assert vals['size_mae'] < 0.75*learn.baseline()['size_mae'], (vals, learn.baseline())
    fn = path/df.fn[df.is_valid].iloc[0]
    res = learn.predict(fn)
    assert res['size'] in LEVELS and set(res.keys()) == {'size', 'colour'}
    learn.export(tmp_path/'m.pkl')
    assert load_learner(tmp_path/'m.pkl').predict(fn)['size'] == res['size']
    samples = dls.valid.show_batch(max_n=2, show=False)
    assert len(samples) == 2

class NoBlock(OrdinalTask):
    block = property(lambda self: Task.block.fget(self))
class NotABlock(OrdinalTask):
    block = property(lambda self: LevelReader())
class NoGetter(OrdinalTask):
    getter = Task.getter

@pytest.mark.parametrize('task, msg', [
    (NoBlock('size'), "NoBlock 'size': NoBlock must define `block`"),
    (NotABlock('size'), "`block` must be a fastai `TransformBlock`, got LevelReader"),
    (NoGetter('size'), "must define `getter`"),
    (OrdinalTask('size', name=3), "`name` must be a non-empty string"),
    (object(), "is not a `Task`"),
])
def test_malformed_task_fails_at_dataloaders_creation(task, msg):
    path, df = sized_shapes(60)
    with pytest.raises(MTLDataError, match=msg.replace('(', r'\(').replace(')', r'\)').replace('`', '.').replace('[', r'\[')):
        MTLDataLoaders.from_df(df, path, 'fn', [task, ClassificationTask('colour')], valid_col='is_valid', bs=8, num_workers=0)

def test_bad_value_names_the_row():
    path, df = sized_shapes(60)
    df.loc[3, 'size'] = 'huge'
    dls = MTLDataLoaders.from_df(df[df.index != 3], path, 'fn', [OrdinalTask('size')], valid_col='is_valid', bs=8, num_workers=0)
    dl = dls.test_dl(df.loc[[3]], with_labels=True)
    with pytest.raises(MTLDataError, match=r"'huge' is not one of the levels"): dl.one_batch()
