"Gradient-level weighting: TorchJD's aggregators and the cosine gate; the shared update is the combination of the per-task gradients computed by hand; absent tasks have no row; heads get their own gradient; freeze, bf16, names, a missing solver, every architecture."
import pytest, torch
from torch import nn
from fastai.vision.all import Callback, CancelFitException, ConvLayer, set_seed
from fastai_mtl.synth import synth_shapes, SHAPE_CODES
from fastai_mtl.tasks import SegmentationTask, ClassificationTask
from fastai_mtl.data import MTLDataLoaders
from fastai_mtl.learner import mtl_learner
from fastai_mtl.weighting import JacobianDescent, CosineGate, jd_aggregator, weightings

from torchjd.aggregation import UPGrad, PCGrad, MGDA, Mean   # the `jd` extra, part of `dev`
from conftest import conv_body

pytestmark = pytest.mark.usefixtures('one_thread')

@pytest.fixture(scope='module')
def dls():
    path, df = synth_shapes(64, size=32, seed=1, missing={'mask': 0.5, 'colour': 0.3})
    tasks = [SegmentationTask('mask', SHAPE_CODES, decoder='light'), ClassificationTask('colour')]
    return MTLDataLoaders.from_df(df, path, 'fn', tasks, valid_col='is_valid', bs=8, num_workers=0, sampler='random')

def body(): return conv_body(widths=(8, 16, 16))

class ByHand(Callback):
    "Before the backward pass: each present task's gradient on the body by plain autograd; after it: the `.grad`s"
    order = -1
    def __init__(self, agg, drop=None): self.agg, self.drop, self.rows = agg, drop, []
    def before_batch(self):
        if self.drop is not None:   # make task `drop` absent from this batch
            t = self.learn.tasks[self.drop]
            self.learn.yb = tuple(t.missing_like(y) if i == self.drop else y for i, y in enumerate(self.yb))
    def before_backward(self):
        jd, m = self.learn.weighting, self.learn.model
        ps = m.shared_parameters()
        self.present = [i for i in range(2) if jd.counts[i] > 0]
        self.J = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(jd.losses[i], ps, retain_graph=True)])
                              for i in self.present])
        self.head_grads = [torch.autograd.grad(jd.losses[i], m.task_parameters(i), retain_graph=True)
                           for i in self.present]
    def after_backward(self):
        m = self.learn.model
        self.got = torch.cat([p.grad.flatten() for p in m.shared_parameters()])
        self.got_heads = [[p.grad.clone() for p in m.task_parameters(i)] for i in self.present]
        raise CancelFitException()

def one_step(dls, weighting, **kw):
    set_seed(0)
    cb = ByHand(**kw)
    learn = mtl_learner(dls, body(), pretrained=False, weighting=weighting, cbs=cb)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    return cb

@pytest.mark.parametrize('name, agg', [('upgrad', UPGrad()), ('pcgrad', PCGrad()), ('mgda', MGDA()), ('jd_mean', Mean())])
def test_update_is_the_aggregated_jacobian(dls, name, agg):
    cb = one_step(dls, name, agg=agg)
    assert cb.present == [0, 1] and cb.J.shape[0] == 2
    want = agg(cb.J)
    assert torch.allclose(cb.got, want, rtol=1e-4, atol=1e-6), (cb.got - want).abs().max()
    for w, g in zip(cb.head_grads, cb.got_heads):
        for a, b in zip(w, g): assert torch.allclose(a, b, atol=1e-7)

def test_absent_task_has_no_row(dls):
    cb = one_step(dls, JacobianDescent(UPGrad()), agg=None, drop=1)
    assert cb.present == [0] and torch.allclose(cb.got, cb.J[0], atol=1e-7)   # one task: its own gradient

def test_frozen_body_trains_the_heads_only(dls):
    set_seed(0)
    learn = mtl_learner(dls, body(), pretrained=False, weighting='upgrad')
    learn.freeze()
    convs = lambda: [p for p in learn.model.body.parameters() if p.dim() == 4]   # (fastai keeps batchnorm trainable: train_bn)
    before = [p.detach().clone() for p in convs()]
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    assert all(torch.equal(a, p) for a, p in zip(before, convs()))
    learn.unfreeze()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    assert not any(torch.equal(a, p) for a, p in zip(before, convs()))

def test_bf16_and_names(dls):
    assert {'upgrad', 'mgda', 'pcgrad', 'cagrad', 'imtl_g'} <= set(weightings)
    assert type(jd_aggregator('cagrad')).__name__ == 'CAGrad'
    with pytest.raises(ValueError, match="unknown aggregator 'nope'"): jd_aggregator('nope')
    set_seed(0)
    learn = mtl_learner(dls, body(), pretrained=False, weighting='pcgrad').to_bf16()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert torch.isfinite(torch.tensor(learn.recorder.values[-1][0]))
    w = learn.weighting.weights
    assert w.shape == (2,) and torch.isfinite(w).all()

def test_cosine_gate_update(dls):
    "The primary's gradient plus each auxiliary's times max(0, cos) with it"
    gate = lambda J: J[0] + torch.nn.functional.cosine_similarity(J[0], J[1], dim=0).clamp_min(0)*J[1]
    cb = one_step(dls, CosineGate('mask'), agg=gate)
    assert cb.present == [0, 1]
    want = gate(cb.J)
    assert torch.allclose(cb.got, want, rtol=1e-4, atol=1e-6), (cb.got - want).abs().max()
    for w, g in zip(cb.head_grads, cb.got_heads):
        for a, b in zip(w, g): assert torch.allclose(a, b, atol=1e-7)

def test_missing_solver_is_reported_at_mtl_learner(dls, monkeypatch):
    "UPGrad needs quadprog: without it, `mtl_learner` says what to install, in fastai_mtl's words, before any fit"
    import torchjd._mixins as mx
    find = mx.find_spec
    monkeypatch.setattr(mx, 'find_spec', lambda name: None if name in ('quadprog', 'qpsolvers') else find(name))
    for name in ('upgrad', 'dualproj'):
        with pytest.raises(ImportError, match=r'pip install "fastai_mtl\[jd\]"'):
            mtl_learner(dls, body(), pretrained=False, weighting=name)
    mtl_learner(dls, body(), pretrained=False, weighting='pcgrad')     # needs no solver

@pytest.mark.parametrize('arch', ['hard', 'cross_stitch'])
def test_every_architecture(dls, arch):
    "The shared parameters are what the model says (`MTLModel.shared_parameters`): cross-stitch's branches and units too"
    set_seed(0)
    learn = mtl_learner(dls, body(), pretrained=False, weighting='upgrad', architecture=arch)
    shared = learn.model.shared_parameters()
    before = [p.detach().clone() for p in shared]
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    assert all(torch.isfinite(torch.tensor(float(v))) for v in learn.recorder.values[-1][:2])
    assert not all(torch.equal(a, p) for a, p in zip(before, shared))
