"PseudoLabel: pseudo-targets checked by hand per task kind, the EMA teacher against its formula, the strong view, the loss term, composition with weightings, alternation, fine_tune, cross-stitch, bf16, checkpoints."
import math, pickle, warnings
import numpy as np, pytest, torch
from torch import nn
from fastai.vision.all import (Callback, CancelEpochException, Flip, Learner, DataLoaders, TensorImage, TensorCategory,
                               TensorBBox, ProgressCallback, set_seed, tensor)
from fastai_mtl.core import MISSING_LABEL, IGNORE_INDEX
from fastai_mtl.transforms import TensorMTLMask
from fastai_mtl.synth import synth_shapes, SHAPE_CODES, BOX_COLS
from fastai_mtl.tasks import SegmentationTask, ClassificationTask, BoxTask, MultiLabelTask, RegressionTask
from fastai_mtl.data import MTLDataLoaders
from fastai_mtl.learner import mtl_learner
from fastai_mtl.model import CheckpointError
from fastai_mtl.pseudo import PseudoLabel, strong_tfms, running_stats_kept, _ramp
from conftest import conv_body

pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py

@pytest.fixture(scope='module')
def dls():
    path, df = synth_shapes(64, size=32, seed=0, missing={'mask': 0.7, 'shape': 0.3, 'box': 0.5})
    tasks = [SegmentationTask('mask', SHAPE_CODES), ClassificationTask('shape'), BoxTask(cols=BOX_COLS)]
    return MTLDataLoaders.from_df(df, path, 'fn', tasks, valid_col='is_valid', bs=16, num_workers=0)

def learner(dls, seed=0, cbs=None, **kwargs):
    set_seed(seed, reproducible=True)
    learn = mtl_learner(dls, conv_body(widths=(8, 16), classifier=True), pretrained=False, cut=-3, decoder='light', cbs=cbs, **kwargs)
    learn.remove_cb(ProgressCallback)
    return learn

def _cb(tasks, active=None):
    cb = PseudoLabel(); cb._active = list(range(len(tasks))) if active is None else active
    return cb

# --- pseudo-targets, by hand ----------------------------------------------------------------------------------------
def test_classification_targets_by_hand():
    t = ClassificationTask('c'); t.vocab = ['a', 'b', 'c']
    acts = [tensor([[.01, .98, .01], [.02, .97, .01], [.4, .5, .1], [.96, .02, .02], [.05, .05, .9]])]
    ys = [TensorCategory([1, MISSING_LABEL, MISSING_LABEL, MISSING_LABEL, MISSING_LABEL])]
    # labelled (kept as is: sentinel in the pseudo batch), confident, unsure, confident, under 0.95
    assert _cb([t]).pseudo_targets([t], acts, [None], ys)[0].tolist() == [MISSING_LABEL, 1, MISSING_LABEL, 0, MISSING_LABEL]
    cb = _cb([t]); cb.thresholds = {'c': 0.85}
    assert cb.pseudo_targets([t], acts, [None], ys)[0].tolist() == [MISSING_LABEL, 1, MISSING_LABEL, 0, 2]

def test_segmentation_targets_by_hand():
    t = SegmentationTask('m', ['bg', 'fg'])
    act = torch.zeros(3, 2, 2, 2)
    act[:, 1] = tensor([[.95, .6], [.05, .92]]); act[:, 0] = 1 - act[:, 1]
    y = torch.full((3, 2, 2), IGNORE_INDEX)
    y[0] = tensor([[0, 1], [IGNORE_INDEX, 1]])          # a labelled mask with one void pixel: not touched
    y = TensorMTLMask(y)
    p = _cb([t]).pseudo_targets([t], [act], [None], [y])[0]
    assert isinstance(p, TensorMTLMask) and p.dtype == y.dtype
    assert (p[0] == IGNORE_INDEX).all()                   # the labelled item gets no pseudo-target, even on its void pixel
    # unlabelled items: pixels at >= 0.9 get their code, the 0.6 pixel stays unlabelled
    assert p[1].tolist() == [[1, IGNORE_INDEX], [0, 1]] and torch.equal(p[1], p[2])
    # with the mirrored prediction, confidence is that of the mean: a pixel the mirror disagrees on is dropped
    flip = act.clone(); flip[:, 1, 0, 0] = .5; flip[:, 0, 0, 0] = .5
    p = _cb([t]).pseudo_targets([t], [act], [flip], [y])[0]
    assert p[1].tolist() == [[IGNORE_INDEX, IGNORE_INDEX], [0, 1]]

def test_box_targets_need_agreement_with_the_mirror():
    t = BoxTask(name='b')
    a = tensor([[[-.5, -.5, .5, .5]], [[-.5, -.5, .5, .5]], [[0., 0., .5, .5]]])
    f = tensor([[[-.5, -.5, .5, .5]], [[-.5, -.5, .3, .5]], [[0., 0., .5, .5]]])     # IoU 1, 0.8, 1
    y = TensorBBox(tensor([[[-1.]*4], [[-1.]*4], [[.1, .1, .2, .2]]]))
    y[:2] = float('nan')
    p = _cb([t]).pseudo_targets([t], [a], [f], [y])[0]
    assert torch.allclose(p[0], a[0])                                          # agreed: the mean box
    assert p[1].isnan().all() and p[2].isnan().all()                          # IoU 0.8 < 0.85; labelled item
    with pytest.raises(ValueError, match='mirrored'): t.pseudo_target(a, None)

def test_multilabel_and_regression_targets():
    t = MultiLabelTask('ml'); t.vocab = ['x', 'y']
    act = tensor([[.99, .02], [.99, .5], [.01, .97]])
    y = torch.full((3, 2), float('nan')); y[2] = tensor([1., 0.])
    p = _cb([t]).pseudo_targets([t], [act], [None], [y])[0]
    assert p[0].tolist() == [1., 0.] and p[1].isnan().all() and p[2].isnan().all()
    r = RegressionTask(['v'], name='v', flip_invariant=True)
    assert r.pseudo_threshold == 0.8 and RegressionTask(['v'], name='v').pseudo_threshold is None   # no mirror, no confidence: not pseudo-labelled
    r.mean, r.std = tensor([0.]), tensor([1.])
    conf = r.pseudo_target(tensor([[1.], [1.]]), tensor([[1.], [3.]]))[1]
    assert torch.allclose(conf.flatten(), torch.exp(-tensor([0., 2.])), atol=1e-6)

def test_default_tasks_and_errors(dls):
    learn = learner(dls, cbs=PseudoLabel())
    assert learn.pseudo_label.active == [0, 1, 2]
    with pytest.raises(ValueError, match=r"no task named \['masks'\]"): learner(dls, cbs=PseudoLabel(tasks=['masks']))
    with pytest.raises(ValueError, match=r"no task named \['boxes'\]"): learner(dls, cbs=PseudoLabel(thresholds={'boxes': .5}))
    learn = learner(dls, cbs=PseudoLabel(), weighting='upgrad')
    with pytest.raises(ValueError, match='gradient weighting'): learn.fit(1)

@pytest.mark.parametrize('kw,msg', [(dict(thresholds={'mask': 1.5}), r"thresholds\['mask'\] must be a number in \[0, 1\]"),
                                    (dict(thresholds={'mask': -.5}), r"thresholds\['mask'\]"), (dict(weight=-1), 'weight must be'),
                                    (dict(start=1.5), r'start must be a number in \[0, 1\)'), (dict(decay=1.), 'decay must be'),
                                    (dict(ramp=float('nan')), 'ramp must be'), (dict(weight='1'), 'weight must be')])
def test_settings_are_checked(kw, msg):
    with pytest.raises(ValueError, match=msg): PseudoLabel(**kw)

# --- the teacher ----------------------------------------------------------------------------------------------------
def test_ema_against_its_formula(dls):
    learn = learner(dls, cbs=PseudoLabel(decay=0.5))
    cb = learn.pseudo_label
    teacher = cb.make_teacher()
    before = {k: v.clone() for k,v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in learn.model.parameters(): p.add_(1.)
    model = learn.model.state_dict()
    cb.update_teacher()                      # n = 0: decay min(0.5, 1/10) = 0.1
    cb.update_teacher()                      # n = 1: decay min(0.5, 2/11)
    d0, d1 = 0.1, 2/11
    for k, t in teacher.state_dict().items():
        if t.dtype.is_floating_point:
            once = d0*before[k] + (1 - d0)*model[k]
            assert torch.allclose(t, d1*once + (1 - d1)*model[k], atol=1e-6), k
        else: assert torch.equal(t, model[k]), k
    for _ in range(30): cb.update_teacher()
    assert min(0.5, (1 + 31)/(10 + 31)) == 0.5                               # the warm-up has reached `decay`
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training

def test_ramp():
    assert _ramp(0) == pytest.approx(math.exp(-5)) and _ramp(1) == 1 and _ramp(2) == 1 and _ramp(.5) == pytest.approx(math.exp(-1.25))

# --- training with it -----------------------------------------------------------------------------------------------
class LossProbe(Callback):
    "The pseudo term each training batch added: `loss_grad - loss`"
    order = 20
    def before_fit(self): self.extra = []
    def after_loss(self):
        if self.training: self.extra.append(float(self.learn.loss_grad.detach() - self.learn.loss.detach()))

def test_training_adds_the_pseudo_loss_and_never_trains_the_teacher(dls):
    pl, probe = PseudoLabel(decay=0.9, thresholds={'mask': 0., 'shape': 0., 'box': 0.}, ramp=0.), LossProbe()
    learn = learner(dls, cbs=[pl, probe])
    learn.fit(2, 1e-2)
    d = pl.df
    assert list(d.epoch) == [0, 1] and (d.mask_pseudo == d.mask_missing).all() and (d.mask_missing > 0).all()
    assert (d.shape_pseudo == d.shape_missing).all() and (d.box_pseudo <= d.box_missing).all()
    assert all(e > 0 for e in probe.extra)                                  # every batch had a missing target: a term was added
    n = int(d.batches[0])                                                   # batches per epoch (the sampler's, both epochs alike)
    assert list(d.batches) == [n, n] and len(probe.extra) == 2*n
    assert np.allclose(d.pseudo_loss * d.batches, [sum(probe.extra[:n]), sum(probe.extra[n:])], rtol=1e-4)
    assert all(p.grad is None for p in pl.teacher.parameters())
    assert pl.n_updates == 2*n and not any(p is q for p in pl.teacher.parameters() for q in learn.model.parameters())
    diff = [(p - q).abs().max() for p,q in zip(pl.teacher.parameters(), learn.model.parameters())]
    assert max(diff) > 0                                                    # an average of past weights, not a copy

def test_nothing_before_start(dls):
    pl, probe = PseudoLabel(start=0.999), LossProbe()
    learn = learner(dls, cbs=[pl, probe])
    learn.fit(1, 1e-2)
    assert pl.df.mask_pseudo.sum() == 0 and all(e == 0 for e in probe.extra)

def test_strong_view_moves_targets_with_the_image(dls):
    cb = PseudoLabel(strong=[Flip(p=1.)])
    cb.learn = Learner(DataLoaders(dls.train, dls.valid), nn.Identity())
    x = dls.one_batch()[0]
    m = TensorMTLMask(torch.zeros(2, 32, 32, dtype=torch.long)); m[:, :, :5] = 2
    b = TensorBBox(tensor([[[-.9, -.5, -.3, .5]], [[.1, .1, .6, .9]]]))
    xs, (ms, bs_) = cb.strong_view(x[:2], [m, b])
    assert torch.allclose(xs, x[:2].flip(-1), atol=1e-5) and torch.equal(ms, m.flip(-1))
    assert torch.allclose(bs_, tensor([[[.3, -.5, .9, .5]], [[-.6, .1, -.1, .9]]]), atol=1e-5)
    cb = PseudoLabel(); cb.learn = Learner(DataLoaders(dls.train, dls.valid), nn.Identity())
    set_seed(0); xs, _ = cb.strong_view(x, [m.repeat(8, 1, 1)])
    assert not torch.allclose(xs, x) and xs.shape == x.shape                    # brightness/contrast changed the pixels
    assert len(strong_tfms(flip=False)) == 2

@pytest.mark.parametrize('kw', [dict(weighting='dwa'), dict(weighting='uncertainty'), dict(alternation='batch'),
                                dict(architecture='cross_stitch')])
def test_composes(dls, kw):
    if kw.get('architecture'):
        set_seed(0)
        learn = mtl_learner(dls, 'convnext_atto', pretrained=False, decoder='light', img_size=32, cbs=PseudoLabel(), **kw)
        learn.remove_cb(ProgressCallback)
    else: learn = learner(dls, cbs=PseudoLabel(), **kw)
    learn.fit(1, 1e-3)
    assert learn.pseudo_label.n_updates == len(learn.recorder.losses) > 0 and np.isfinite(learn.recorder.losses).all()

def test_fine_tune_and_bf16(dls):
    learn = learner(dls, cbs=PseudoLabel(thresholds={'mask': 0., 'shape': 0., 'box': 0.}, ramp=0.)).to_bf16()
    probe = LossProbe(); learn.add_cb(probe)
    learn.fine_tune(1, 1e-3, freeze_epochs=1)
    assert learn.pseudo_label.n_updates == 2*len(learn.dls.train) and len(learn.pseudo_label.history) == 2
    assert all(np.isfinite(e) and e > 0 for e in probe.extra)
    assert all(p.dtype == torch.float32 for p in learn.pseudo_label.teacher.parameters())

def test_checkpoints_keep_the_teacher(dls, tmp_path):
    learn = learner(dls, cbs=PseudoLabel(decay=0.9), path=tmp_path)
    learn.fit(1, 1e-2)
    t0 = {k: v.clone() for k,v in learn.pseudo_label.teacher.state_dict().items()}
    f = learn.save('m')
    assert f.exists() and (tmp_path/'models'/'m.teacher.pth').exists()
    other = learner(dls, seed=3, cbs=PseudoLabel(decay=0.9), path=tmp_path)
    other.load('m')
    assert other.pseudo_label.n_updates == learn.pseudo_label.n_updates
    assert all(torch.equal(v, t0[k]) for k,v in other.pseudo_label.teacher.state_dict().items())
    (tmp_path/'models'/'m.teacher.pth').unlink()
    with pytest.warns(UserWarning, match='no teacher saved beside m.pth'): other.load('m')
    assert all(torch.equal(a, b) for a,b in zip(other.pseudo_label.teacher.state_dict().values(), other.model.state_dict().values()))
    state = pickle.loads(pickle.dumps(learn.pseudo_label))                  # `export` pickles the callbacks: no teacher
    assert state.teacher is None

def test_teacher_file_checked_before_the_model_loads(dls, tmp_path):
    "A damaged teacher file is named before anything changes; a teacher of another model (a save killed between the two files) is not used"
    learn = learner(dls, cbs=PseudoLabel(decay=0.9), path=tmp_path)
    learn.fit(1, 1e-2)
    learn.save('m'); tf = tmp_path/'models'/'m.teacher.pth'
    good = tf.read_bytes()
    other = learner(dls, seed=3, cbs=PseudoLabel(decay=0.9), path=tmp_path)
    before = {k: v.clone() for k,v in other.model.state_dict().items()}
    tf.write_bytes(good[:len(good)//2])
    with pytest.raises(CheckpointError, match=r"teacher file .*m\.teacher\.pth cannot be read.*nothing was loaded"): other.load('m')
    assert all(torch.equal(v, before[k]) for k,v in other.model.state_dict().items())   # the model was not touched
    tf.write_bytes(good)
    learn.fit(1, 1e-2)
    torch.save(learn.model.state_dict(), tmp_path/'models'/'m.pth')     # a new model file; the teacher file is the old one
    with pytest.warns(UserWarning, match='saved with another model'): other.load('m')
    assert all(torch.equal(a, b) for a,b in zip(other.pseudo_label.teacher.state_dict().values(), other.model.state_dict().values()))

def test_one_pseudo_item_is_skipped_two_are_used(dls):
    "A training-mode BatchNorm cannot take one item: a batch where only one item gets a pseudo-target adds nothing"
    learn = learner(dls, cbs=PseudoLabel(thresholds={'mask': 0., 'shape': 0., 'box': 0.}, ramp=0.))
    pl = learn.pseudo_label
    x, m, c, b = dls.one_batch()
    m, c, b = TensorMTLMask(torch.zeros_like(m)), TensorCategory(torch.zeros_like(c)), TensorBBox(torch.full_like(b, .5))
    b[..., :2] = -.5
    learn.epoch, learn.training, learn.pct_train = 0, True, .5
    learn.model.train(); pl.before_fit(); pl.before_train()
    for n_missing, added in ((1, False), (2, True)):
        mm = m.clone(); mm[:n_missing] = IGNORE_INDEX
        learn.xb, learn.yb = (x,), (mm, c, b)
        learn.loss = learn.loss_grad = tensor(1.)
        pl.after_loss()
        assert (float(learn.loss_grad) != 1.) == added
    assert pl._epoch['mask_missing'] == 3 and pl._epoch['mask_pseudo'] == 2

def test_strong_view_keeps_the_running_statistics():
    "The strong view trains through batchnorm in training mode, but evaluation's running statistics are not moved by it"
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(4, momentum=None)).train()
    m(torch.randn(4, 3, 8, 8))
    before = {k: v.clone() for k,v in m.state_dict().items()}
    with running_stats_kept(m): y = m(torch.randn(4, 3, 8, 8) * 5 + 3)
    assert all(torch.equal(v, before[k]) for k,v in m.state_dict().items())
    assert m[1].momentum == .1 and m[5].momentum is None                     # restored
    y.sum().backward(); assert m[0].weight.grad is not None                  # still trains
    assert torch.allclose(y.mean(0), torch.zeros(4), atol=1e-5)              # normalised with the batch's own statistics
    m(torch.randn(4, 3, 8, 8))
    assert not torch.equal(m[1].running_mean, before['1.running_mean'])       # outside: the usual updates
