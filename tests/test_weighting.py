"Weightings: DWA against its formula, absent tasks, windows; uncertainty parameters; names; one written outside the package; save/resume."
import math, random, warnings
import numpy as np, pytest, torch
from torch import nn
from fastai.vision.all import (Callback, ConvLayer, SaveModelCallback, CancelFitException, set_seed, tensor, Path,
                               ProgressCallback)
from fastai_mtl.synth import synth_shapes, SHAPE_CODES
from fastai_mtl.tasks import SegmentationTask, ClassificationTask, BoxTask
from fastai_mtl.data import MTLDataLoaders
from fastai_mtl.learner import mtl_learner, MaskedMultiLoss
from fastai_mtl.weighting import *
from fastai_mtl.recorder import TaskLossRecorder
from fastai_mtl.alternation import TaskRounds
from conftest import conv_body

pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py

@pytest.fixture(scope='module')
def dls():
    path, df = synth_shapes(64, size=32, seed=0, missing={'mask': 0.5, 'colour': 0.2, 'box': 0.3})
    tasks = [SegmentationTask('mask', SHAPE_CODES), ClassificationTask('colour'), BoxTask()]
    # purely random batches: 51 training images, 3 batches per epoch, which the window tests count on
    return MTLDataLoaders.from_df(df, path, 'fn', tasks, valid_col='is_valid', bs=16, num_workers=0, sampler='random')

def net(): return conv_body(widths=(8, 16), classifier=True)

def learner(dls, seed=0, **kwargs):
    "A tiny deterministic multi-task learner (3 tasks) without progress bar"
    set_seed(seed, reproducible=True)
    learn = mtl_learner(dls, net(), pretrained=False, cut=-3, decoder='light', **kwargs)
    learn.remove_cb(ProgressCallback)
    return learn

class BatchLog(Callback):
    "Test probe: each training batch's per-task losses, counts and the weights in force"
    order = 5
    def before_fit(self): self.rows = []
    def after_loss(self):
        if self.training:
            lf = self.learn.loss_func    # (the weights the batch's loss used)
            self.rows.append((self.epoch, lf.last_losses.double().clone(), lf.last_counts.double().clone(), lf.weighting.weights.clone()))
    def epoch_means(self, e):
        "Mean loss over the labelled items of epoch `e`, computed independently"
        rs = [r for r in self.rows if r[0] == e]
        s = sum(l*c for _,l,c,_ in rs); n = sum(c for _,_,c,_ in rs)
        return torch.where(n > 0, s/n.clamp_min(1), float('nan'))
    def epoch_weights(self, e):
        ws = [w for r in self.rows if r[0] == e for w in [r[3]]]
        assert all(torch.equal(w, ws[0]) for w in ws), 'epoch-wise DWA changed the weights within an epoch'
        return ws[0]

def expected_dwa(L, T=2.):
    "DWA weights by hand (every task labelled in every epoch): 1, 1, then K*softmax(L(t-1)/L(t-2)/T)"
    K, out = L.shape[1], [np.ones(L.shape[1])]*2
    for t in range(2, len(L)):
        e = np.exp(L[t-1]/L[t-2]/T)
        out.append(K*e/e.sum())
    return np.stack(out[:len(L)])

# --- the formula ----------------------------------------------------------------------------------------------
def test_dwa_weights_function():
    w, r = dwa_weights(tensor([1., 1.6, 3.]), tensor([2., 2., 3.]), torch.ones(3), T=2)
    e = np.exp(np.array([.5, .8, 1.])/2)
    np.testing.assert_allclose(w.numpy(), 3*e/e.sum(), rtol=1e-6)
    np.testing.assert_allclose(r.numpy(), [.5, .8, 1.], rtol=1e-6)
    # a task without labelled items (NaN), or a ratio that isn't finite (previous loss 0): kept; the others share the rest
    w, r = dwa_weights(tensor([1., float('nan'), 3., 2.]), tensor([2., 2., 0., 4.]), tensor([.5, 1.5, .8, 1.2]), T=1)
    e = np.exp(np.array([.5, .5]))
    np.testing.assert_allclose(w.numpy(), [(4-1.5-.8)*e[0]/e.sum(), 1.5, .8, (4-1.5-.8)*e[1]/e.sum()], rtol=1e-6)
    assert r[1].isnan() and r[2].isnan() and math.isclose(w.sum().item(), 4, rel_tol=1e-6)
    # no ratio at all: nothing changes
    w, _ = dwa_weights(tensor([float('nan')]*2), tensor([1., 1.]), tensor([.3, 1.7]))
    assert torch.equal(w, tensor([.3, 1.7]))
    # a higher temperature gives more even weights
    w1, _ = dwa_weights(tensor([1., 2.]), tensor([2., 2.]), torch.ones(2), T=1)
    w4, _ = dwa_weights(tensor([1., 2.]), tensor([2., 2.]), torch.ones(2), T=4)
    assert w1[1] > w4[1] > 1 > w4[0] > w1[0]

# --- DWA in training ------------------------------------------------------------------------------------------
def test_dwa_training_matches_formula(dls):
    learn = learner(dls, weighting='dwa', cbs=[BatchLog(), TaskLossRecorder()])
    learn.fit(4, 1e-2)
    log, h = learn.batch_log, learn.weighting.history
    L = np.stack([log.epoch_means(e).numpy() for e in range(4)])
    np.testing.assert_allclose(h.filter(like='_loss').values, L, rtol=1e-5)       # exact means over the labelled items
    np.testing.assert_allclose(h.filter(like='_n').values, np.stack([sum(r[2] for r in log.rows if r[0] == e).numpy() for e in range(4)]))
    used = np.stack([log.epoch_weights(e).numpy() for e in range(4)])             # what the loss actually used
    np.testing.assert_allclose(used, expected_dwa(L), rtol=1e-5)
    np.testing.assert_allclose(h.filter(like='_w').values, used, rtol=1e-6)
    assert (used[:2] == 1).all() and not np.allclose(used[2:], 1)
    np.testing.assert_allclose(h.filter(like='_r').values[2:], L[1:3]/L[0:2], rtol=1e-5)
    assert np.isnan(h.filter(like='_r').values[:2]).all()
    # the recorder saw the same losses and weights
    rec = learn.task_loss_recorder.df
    np.testing.assert_allclose(rec.filter(like='_train').values, L, rtol=1e-5)
    np.testing.assert_allclose(rec.filter(like='_w').values, used, rtol=1e-6)
    # the progress table shows the weights, and the extra columns leave the metrics after the fit
    assert {'mask_w', 'colour_w', 'box_w'} <= set(learn.recorder.metric_names)
    assert not any(m.name.endswith('_w') for m in learn.metrics)

class DropBoxes(Callback):
    "Test probe: no box label in the training batches of epoch `epoch`"
    order = -1
    def __init__(self, epoch): self.drop = epoch
    def before_batch(self):
        if self.training and self.epoch == self.drop:
            self.learn.yb = (*self.learn.yb[:2], torch.full_like(self.learn.yb[2], float('nan')))

def test_dwa_absent_task_keeps_its_weight(dls):
    learn = learner(dls, weighting='dwa', cbs=[BatchLog(), DropBoxes(3)])
    learn.fit(6, 1e-2)
    h, log = learn.weighting.history, learn.batch_log
    W, L = h.filter(like='_w').values, h.filter(like='_loss').values
    assert np.isnan(L[3, 2]) and h.box_n[3] == 0 and not np.isnan(L[:3, 2]).any()
    np.testing.assert_allclose(W[:4], expected_dwa(L[:4]), rtol=1e-5)   # epoch 3 still uses epochs 1 and 2
    for t in (4, 5):     # box's ratio needs epoch 3: undefined, so box keeps its weight; the others share 3 - w_box
        assert np.isnan(h.box_r[t]) and W[t, 2] == pytest.approx(W[3, 2], rel=1e-6)
        e = np.exp(L[t-1, :2]/L[t-2, :2]/2)
        np.testing.assert_allclose(W[t, :2], (3 - W[t-1, 2])*e/e.sum(), rtol=1e-5)
        assert W[t].sum() == pytest.approx(3, rel=1e-5)
    np.testing.assert_allclose(np.stack([log.epoch_weights(e).numpy() for e in range(6)]), W, rtol=1e-6)

def test_dwa_window(dls):
    "Per-iteration DWA: a period is `window` training batches, across epochs (3 batches per epoch here)"
    learn = learner(dls, weighting=DWA(window=2), cbs=BatchLog())
    learn.fit(3, 1e-2)
    rows, h = learn.batch_log.rows, learn.weighting.history
    assert len(rows) == 9 and len(h) == 4 and learn.weighting.sums.n_batches == 1   # 4 full windows, 1 batch pending
    L = np.stack([(sum(r[1]*r[2] for r in rows[i:i+2])/sum(r[2] for r in rows[i:i+2])).numpy() for i in range(0, 8, 2)])
    np.testing.assert_allclose(h.filter(like='_loss').values, L, rtol=1e-5)
    W = expected_dwa(L)
    e = np.exp(L[3]/L[2]/2)
    per_batch = np.stack([r[3].numpy() for r in rows])
    np.testing.assert_allclose(per_batch, np.stack([W[0]]*2 + [W[1]]*2 + [W[2]]*2 + [W[3]]*2 + [3*e/e.sum()]), rtol=1e-5)
    assert h.index.name == 'period'
    with pytest.raises(ValueError, match='window'): DWA(window=0)

def test_dwa_one_task_per_epoch(dls):
    "With one task's samples per epoch (`TaskEpochSampler`) and disjoint labels, every other task keeps its weight"
    path, full = synth_shapes(64, size=32, seed=0)
    full = full.copy()
    full.loc[full.index % 2 == 0, 'colour'] = None
    full.loc[full.index % 2 == 1, ['x1', 'y1', 'x2', 'y2']] = np.nan
    d2 = MTLDataLoaders.from_df(full, path, 'fn', [ClassificationTask('colour'), BoxTask()], valid_col='is_valid', bs=8,
                                num_workers=0, sampler='epoch')
    set_seed(0, reproducible=True)
    learn = mtl_learner(d2, net(), pretrained=False, cut=-3, weighting='dwa')
    learn.remove_cb(ProgressCallback)
    learn.fit(4, 1e-2)
    h = learn.weighting.history
    zero = h.filter(like='_n').values == 0     # one task per epoch, in turn
    assert (zero.sum(1) == 1).all() and (zero[1:] != zero[:-1]).all()
    assert (h.filter(like='_w').values == 1).all() and np.isnan(h.filter(like='_r').values).all()

@pytest.mark.parametrize('sampler,cbs', [('epoch', []), ('task', [TaskRounds()])])
def test_dwa_with_other_batches(dls, sampler, cbs):
    "DWA composes with other samplers and rounds of task batches: its epoch losses are the exact means over the labelled items of what was drawn"
    learn = learner(dls, weighting='dwa', sampler=sampler, cbs=[BatchLog(), *cbs])
    learn.fit(3, 1e-2)
    L = np.stack([learn.batch_log.epoch_means(e).numpy() for e in range(3)])
    h = learn.weighting.history
    np.testing.assert_allclose(h.filter(like='_loss').values, L, rtol=1e-5)
    np.testing.assert_allclose(h.filter(like='_w').values, expected_dwa(L), rtol=1e-5)

# --- static, equal, names -------------------------------------------------------------------------------------
@pytest.mark.parametrize('name,cls', [('equal', EqualWeighting), ('static', StaticWeighting), ('dwa', DWA),
                                      ('uncertainty', UncertaintyWeighting)])
def test_selectable_by_name(dls, name, cls):
    learn = learner(dls, weighting=name)
    assert type(learn.weighting) is cls and learn.model.weighting is learn.weighting is learn.loss_func.weighting
    assert learn.weighting.names == ['mask', 'colour', 'box']

def test_static_and_equal(dls):
    learn = learner(dls, weighting=StaticWeighting({'box': 3.}))
    assert learn.weighting.weights.tolist() == [1., 1., 3.]
    learn = learner(dls, weighting=StaticWeighting([.5, 2, 1]), cbs=TaskLossRecorder())
    learn.fit(1, 1e-3)
    assert learn.weighting.weights.tolist() == [.5, 2., 1.] and learn.task_loss_recorder.df.colour_w[0] == 2.
    dls.tasks[2].weight = 4.
    try:
        assert learner(dls).weighting.weights.tolist() == [1., 1., 4.]                       # the default: each Task.weight
        assert learner(dls, weighting='static').weighting.weights.tolist() == [1., 1., 4.]
    finally: dls.tasks[2].weight = 1.
    assert learner(dls, weighting='equal').weighting.weights.tolist() == [1., 1., 1.]
    with pytest.raises(ValueError, match='unknown task'): learner(dls, weighting=StaticWeighting({'bbox': 1.}))
    with pytest.raises(ValueError, match='2 weights for 3 tasks'): learner(dls, weighting=StaticWeighting([1, 2]))

def test_a_weighting_is_not_a_callback(dls):
    "One weighting at a time, in the model's slot: passing one as a callback says where it goes"
    with pytest.raises(TypeError, match=r'is a weighting, not a callback: pass it as `mtl_learner\(weighting=...\)`'):
        learner(dls, cbs=DWA())
    learn = learner(dls, weighting='dwa')
    learn.set_weighting('equal')
    assert type(learn.model.weighting) is EqualWeighting and learn.loss_func.weighting is learn.model.weighting

def test_needs_masked_multi_loss(dls):
    with pytest.raises(ValueError, match='needs a `MaskedMultiLoss`'): learner(dls, loss_func=lambda *a: 0, weighting='dwa')

# --- uncertainty ----------------------------------------------------------------------------------------------
def test_uncertainty_loss_absent_task():
    ul = UncertaintyWeighting().setup([ClassificationTask('a'), ClassificationTask('b')])
    with torch.no_grad(): ul.log_vars.copy_(tensor([.5, -1.]))
    losses = tensor([2., 0.], requires_grad=True)
    tot = ul(losses, tensor([3, 0]))
    assert tot.item() == pytest.approx(math.exp(-.5)*2 + .25)   # the absent task adds nothing, not s/2
    tot.backward()
    assert ul.log_vars.grad[1] == 0 and ul.log_vars.grad[0] == pytest.approx(-math.exp(-.5)*2 + .5)

def test_uncertainty_trains_when_frozen_and_is_saved(dls, tmp_path):
    learn = learner(dls, weighting=UncertaintyWeighting(factors={'box': .5}), cbs=TaskLossRecorder(show=True))
    learn.freeze()
    uw = learn.model.weighting
    assert isinstance(uw, UncertaintyWeighting) and learn.loss_func.weighting is uw and uw.c.tolist() == [1., 1., .5]
    assert any(p is uw.log_vars for p in learn.opt.param_lists[-1]) and uw.log_vars.requires_grad
    body = [p.detach().clone() for p in learn.model.body.parameters() if not p.requires_grad]
    assert body
    learn.fit(2, 1e-2)
    assert (uw.log_vars.detach() != 0).all()                              # the log-variances learned
    assert all(torch.equal(a, b) for a,b in zip(body, [p for p in learn.model.body.parameters() if not p.requires_grad]))
    assert learn.opt.state[uw.log_vars]['do_wd'] is False
    w = learn.task_loss_recorder.df.filter(like='_w').values[-1]
    np.testing.assert_allclose(w, (uw.c*torch.exp(-uw.log_vars)).detach().numpy(), rtol=1e-6)
    assert 'box_w' in learn.recorder.metric_names and 'box_train' in learn.recorder.metric_names
    learn.path = tmp_path
    learn.save('u')
    l2 = learner(dls, seed=1, weighting=UncertaintyWeighting(factors={'box': .5}))
    assert not torch.equal(l2.model.weighting.log_vars, uw.log_vars)
    l2.path = tmp_path
    l2.load('u')
    assert torch.equal(l2.model.weighting.log_vars, uw.log_vars)
    assert l2.loss_func.weighting is l2.model.weighting

def test_uncertainty_set_later(dls):
    "`set_weighting` after the optimiser exists: its parameters join the optimiser, the frozen groups stay frozen"
    learn = learner(dls)
    learn.freeze()
    learn.set_weighting(UncertaintyWeighting())
    uw = learn.model.weighting
    assert learn.loss_func.weighting is uw
    assert any(p is uw.log_vars for p in learn.opt.param_lists[-1]) and learn.opt.frozen_idx == len(learn.opt.param_lists)-1
    learn.fit(1, 1e-2)
    assert not any(p.requires_grad for p in learn.opt.param_lists[0] if p.ndim > 1) and (uw.log_vars != 0).all()

def test_dwa_state_is_saved(dls, tmp_path):
    learn = learner(dls, weighting='dwa')
    learn.fit(3, 1e-2)
    learn.path = tmp_path
    learn.save('d')
    sd = learn.model.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in sd.values()) and 'weighting._extra_state' in sd   # tensors only
    l2 = learner(dls, weighting='dwa')
    l2.path = tmp_path
    assert len(l2.weighting) == 0
    l2.load('d')
    assert l2.weighting.history.equals(learn.weighting.history)
    with pytest.warns(UserWarning, match="weighting state .* is not this model's"):   # no DWA here: the rest loads
        l0 = learner(dls).load(tmp_path/'models'/'d')
    assert torch.equal(l0.model.body[0][0].weight, learn.model.body[0][0].weight)
    with pytest.warns(UserWarning, match="UncertaintyWeighting"): learner(dls, weighting='uncertainty').load(tmp_path/'models'/'d')
    l3 = learner(dls).set_weighting(DWA())                   # set later: its state joins the model at once
    l3.load(tmp_path/'models'/'d')
    assert l3.weighting.history.equals(learn.weighting.history)
    assert torch.equal(l3.weighting.next_weights()[0], learn.weighting.next_weights()[0])

def test_dwa_state_round_trip():
    "The whole state, the pending sums of an unfinished period too, goes through `state_dict`"
    ts = [ClassificationTask('a'), ClassificationTask('b')]
    d = DWA().setup(ts).train()
    d(tensor([1., 2.]), tensor([3, 0])); d.end_epoch()
    d(tensor([.5, 4.]), tensor([2, 1]))
    sd = d.state_dict()
    d2 = DWA().setup(ts)
    d2.load_state_dict(sd)
    assert d2.history.fillna(-1).equals(d.history.fillna(-1))
    assert torch.equal(d2.sums.sums, d.sums.sums) and d2.sums.n_batches == 1 and len(d2) == 1
    with pytest.raises(ValueError, match='is for 2 tasks, this model has 3'): DWA().setup(ts + [ClassificationTask('c')]).load_state_dict(sd)

def test_legacy_dwa_state_loads(dls):
    "A checkpoint of fastai_mtl 0.1 (`nn.Sequential(body, MultiTaskHead)`, DWA's state as `1.loss_weighting.*` buffers) loads"
    learn = learner(dls, weighting='dwa')
    learn.fit(3, 1e-2)
    sd = learn.model.state_dict()
    old = {('0.' + k[5:]) if k.startswith('body.') else ('1.' + k[6:]): v for k,v in sd.items() if k.startswith(('body.', 'heads.'))}
    h = learn.weighting.history_
    old.update({'1.loss_weighting.' + k: h[k] for k in DWA._keys})
    old['1.loss_weighting.open_period'] = torch.zeros(4, 3); old['1.loss_weighting.open_batches'] = torch.tensor(0)
    l2 = learner(dls, seed=1, weighting='dwa')
    l2.model.load_state_dict(old)
    assert l2.weighting.history.fillna(-1).equals(learn.weighting.history.fillna(-1))
    assert all(torch.equal(a, b) for a,b in zip(l2.model.body.state_dict().values(), learn.model.body.state_dict().values()))

# --- resuming an interrupted run ------------------------------------------------------------------------------
class EpochSeed(Callback):
    "Test probe: the randomness of each epoch (shuffling, dropout) depends only on the epoch number"
    order = -20
    def before_epoch(self):
        torch.manual_seed(self.epoch); self.dls.train.rng = random.Random(self.epoch)

class StopAfter(Callback):
    "Test probe: interrupt training after epoch `epoch` (after `SaveModelCallback` saved it)"
    order = 100
    def __init__(self, epoch): self.stop = epoch
    def after_epoch(self):
        if self.epoch == self.stop: raise CancelFitException

@pytest.mark.parametrize('weighting', ['dwa', 'uncertainty'])
def test_resume_gives_the_same_run(dls, tmp_path, weighting):
    def run(start=0, stop=None, load=None):
        learn = learner(dls, weighting=weighting, cbs=[EpochSeed(), TaskLossRecorder()], path=tmp_path)
        if load: learn.load(load)
        cbs = [SaveModelCallback(fname='ck', every_epoch=True, with_opt=True)] + ([StopAfter(stop)] if stop is not None else [])
        learn.fit_one_cycle(5, 1e-2, cbs=cbs, start_epoch=start)
        return learn
    full = run()
    run(stop=2)                                  # stopped after its third epoch (saved as ck_2)
    resumed = run(start=3, load='ck_2')
    assert resumed.task_loss_recorder.df.epoch.tolist() == [3, 4]
    for a,b in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert a[0] == b[0]
        if torch.is_tensor(a[1]): assert torch.equal(a[1].nan_to_num(-1), b[1].nan_to_num(-1)), a[0]   # (DWA's first ratios are NaN)
    rf, rr = full.task_loss_recorder.df, resumed.task_loss_recorder.df
    assert np.array_equal(rf.filter(like='_w').values[3:], rr.filter(like='_w').values)
    if weighting == 'dwa':
        assert full.weighting.history.equals(resumed.weighting.history) and len(full.weighting.history) == 5
        assert not np.allclose(full.weighting.history.filter(like='_w').values[3:], 1)

class RunningMean(Weighting):
    "A weighting written outside the package, with state (a buffer): each task's loss over its running mean"
    show_weights = True
    def __init__(self, beta=0.5): self.beta = beta
    def setup(self, tasks):
        super().setup(tasks); self.register_buffer('mean', torch.ones(self.n_tasks)); return self
    def forward(self, losses, counts):
        if self.training:
            with torch.no_grad():
                m = self.mean.to(losses)
                self.mean.copy_(torch.where(counts > 0, self.beta*m + (1 - self.beta)*losses.detach(), m))
        return (losses/self.mean.to(losses)).sum()
    @property
    def weights(self): return 1/self.mean.detach().float().cpu()

def test_weighting_written_outside(dls, tmp_path):
    "One class in user code: registered, chosen by name, trained, saved, resumed exactly"
    weightings.register('running_mean', obj=RunningMean)
    try:
        def run(start=0, stop=None, load=None):
            learn = learner(dls, weighting='running_mean', cbs=[EpochSeed(), TaskLossRecorder()], path=tmp_path)
            if load: learn.load(load)
            cbs = [SaveModelCallback(fname='rm', every_epoch=True, with_opt=True)] + ([StopAfter(stop)] if stop is not None else [])
            learn.fit_one_cycle(4, 1e-2, cbs=cbs, start_epoch=start)
            return learn
        full = run()
        assert type(full.weighting) is RunningMean and not torch.allclose(full.weighting.mean, torch.ones(3))
        assert 'colour_w' in full.recorder.metric_names
        run(stop=1)
        resumed = run(start=2, load='rm_1')
        assert torch.equal(full.weighting.mean, resumed.weighting.mean)
        for a,b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()): assert torch.equal(a, b)
    finally: weightings.items.pop('running_mean')

# --- plot -----------------------------------------------------------------------------------------------------
def test_plot_task_losses(dls):
    learn = learner(dls, weighting='dwa')
    assert isinstance(learn.task_loss_recorder, TaskLossRecorder)          # mtl_learner adds one by default
    learn.fit(1, 1e-3)
    assert len(learn.plot_task_losses()) == 4                               # so a plain fit can be plotted
    learn.remove_cb(learn.task_loss_recorder)
    learn.fit(1, 1e-3)
    with pytest.raises(ValueError, match='TaskLossRecorder'): learn.plot_task_losses()
    learn = learner(dls, weighting='dwa', cbs=TaskLossRecorder(show=True))
    learn.fit(2, 1e-3)
    j = learn.recorder.metric_names[1:].index('colour_loss')
    valid = [r[j] for r in learn.recorder.values]
    assert len(learn.validate()) == len(learn.metrics) + 1                  # the weight/loss columns only show in `fit`
    learn.get_preds()
    assert len(learn.task_loss_recorder.rows) == 2                          # `validate`, `get_preds` keep the rows
    axs = learn.plot_task_losses()
    assert len(axs) == 4 and [a.get_title() for a in axs] == ['mask', 'colour', 'box', 'weights'] and axs[0].get_ylabel().startswith('loss')
    train, vline = axs[1].get_lines()
    assert list(train.get_xdata()) == [0, 1] and list(vline.get_ydata()) == valid
    assert list(train.get_ydata()) == learn.task_loss_recorder.df.colour_train.tolist()
