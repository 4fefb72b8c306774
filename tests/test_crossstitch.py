"Cross-stitch units, the cross-stitch model (branches, stages, splitter, training, export) and feature transfer (fastai_mtl.transfer)."
import importlib, tempfile, warnings
from copy import deepcopy
from pathlib import Path
import numpy as np
import pytest, torch
from torch import nn
from fastai.vision.all import resnet18, ConvLayer, TimmBody, load_learner, params, set_seed, total_params
from fastai_mtl.core import IGNORE_INDEX
from fastai_mtl.tasks import SegmentationTask, ClassificationTask, BoxTask
from fastai_mtl.data import MTLDataLoaders
from fastai_mtl.model import create_mtl_body, create_mtl_model, MultiTaskHead
from fastai_mtl.learner import mtl_learner
from fastai_mtl.synth import synth_shapes, SHAPE_CODES
from fastai_mtl.crossstitch import *
from fastai_mtl.transfer import *
from fastai_mtl.model import MTLModel
from conftest import conv_body

def small_body(n_in=3): return conv_body(n_in)   # three conv stages, 1/2, 1/4, 1/8

def make_tasks(): return [SegmentationTask('mask', SHAPE_CODES), ClassificationTask('colour', vocab=['blue', 'green', 'red']), BoxTask()]

@pytest.fixture(scope='module')
def synth():
    return synth_shapes(96, size=32, seed=1, missing={'mask': 0.5, 'colour': 0.3, 'box': 0.4})

def dls_of(synth, *tasks, bs=16):
    path, df = synth
    return MTLDataLoaders.from_df(df, path, 'fn', list(tasks), valid_col='is_valid', bs=bs, num_workers=0)

# --- the unit ---------------------------------------------------------------------------------------------------
X0 = torch.tensor([[[1., 2.], [3., 4.]], [[0., 0.], [1., 1.]]])[None]     # (bs=1, C=2, 2, 2)
X1 = torch.tensor([[[10., 0.], [0., 10.]], [[2., 4.], [6., 8.]]])[None]

def test_unit_mixes_by_hand():
    u = CrossStitchUnit(2)
    u.alpha = [[.7, .3], [.2, .8]]
    y0, y1 = u([X0, X1])
    assert torch.allclose(y0, torch.tensor([[[3.7, 1.4], [2.1, 5.8]], [[.6, 1.2], [2.5, 3.1]]])[None])
    assert torch.allclose(y1, torch.tensor([[[8.2, .4], [.6, 8.8]], [[1.6, 3.2], [5., 6.6]]])[None])

def test_unit_per_channel_by_hand():
    u = CrossStitchUnit(2, n_channels=2)
    u.alpha = torch.stack([torch.tensor([[0., 1.], [1., 0.]]), torch.tensor([[.25, .75], [1., 0.]])], dim=-1)
    y0, y1 = u([X0, X1])
    assert torch.equal(y0[:, 0], X1[:, 0]) and torch.equal(y1[:, 0], X0[:, 0])
    assert torch.allclose(y0[:, 1], torch.tensor([[1.5, 3.], [4.75, 6.25]])[None])
    assert torch.equal(y1[:, 1], X0[:, 1])

def test_unit_more_inputs_than_outputs():
    u = CrossStitchUnit(1, 3)
    u.alpha = [[.5, .25, .25]]
    x2 = torch.full_like(X0, 4.)
    (y,) = u([X0, X1, x2])
    assert torch.allclose(y, .5 * X0 + .25 * X1 + 1.)
    with pytest.raises(ValueError, match='2 feature maps'): u([X0, X1])

def test_alpha_init():
    a = CrossStitchUnit(3).alpha
    assert torch.allclose(a, torch.tensor([[.9, .05, .05], [.05, .9, .05], [.05, .05, .9]]))
    assert torch.allclose(CrossStitchUnit(2, self_weight=.6).alpha, torch.tensor([[.6, .4], [.4, .6]]))
    pc = CrossStitchUnit(2, 3, n_channels=5).alpha
    assert pc.shape == (2, 3, 5) and torch.allclose(pc[..., 4], cross_stitch_init(2, 3))
    assert torch.allclose(cross_stitch_init(1, 3), torch.tensor([[.9, .05, .05]]))
    assert torch.equal(cross_stitch_init(1), torch.ones(1, 1))
    u = CrossStitchUnit(2, lr_mult=1000.)
    assert torch.allclose(u.alpha, torch.tensor([[.9, .1], [.1, .9]])) and torch.allclose(u.weight, u.alpha / 1000)
    with pytest.raises(ValueError): cross_stitch_init(3, 2)

def test_alpha_gradients():
    u = CrossStitchUnit(2, n_channels=2)
    y0, y1 = u([X0, X1])
    (y0 * 3 + y1).sum().backward()
    g = torch.stack([X0.sum((0, 2, 3)), X1.sum((0, 2, 3))])      # (branch, channel)
    assert torch.allclose(u.weight.grad, torch.stack([3 * g, g]))

# --- stages ----------------------------------------------------------------------------------------------------
def test_body_stages_resnet_and_custom():
    ranges, shapes = body_stages(create_mtl_body(resnet18, pretrained=False), 32)
    assert ranges == [(0, 3), (3, 5), (5, 6), (6, 7), (7, 8)]
    assert [s[0] for s in shapes] == [64, 64, 128, 256, 512]
    assert body_stages(small_body(), 32) == ([(0, 1), (1, 2), (2, 3)], [(8, 16, 16), (16, 8, 8), (32, 4, 4)])
    with pytest.raises(ValueError, match='does not return a feature map'): body_stages(nn.Sequential(ConvLayer(3, 4), nn.Flatten()), 32)
    with pytest.raises(TypeError, match='nn.Sequential'): sequential_body(nn.Conv2d(3, 4, 3))

def test_timm():
    body = create_mtl_body('resnet18', pretrained=False)       # stages are children of the model
    assert isinstance(body, TimmBody)
    seq = sequential_body(body, 32)
    assert list(seq._modules) == ['conv1', 'bn1', 'act1', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4']
    assert body_stages(seq, 32)[0] == [(0, 3), (3, 5), (5, 6), (6, 7), (7, 8)]
    m = create_cross_stitch_model('convnext_atto', make_tasks(), pretrained=False, img_size=32, decoder='light')
    assert list(m.branches[0]._modules)[:3] == ['stem_0', 'stem_1', 'stages_0']   # stages inside a Sequential, flattened
    assert [tuple(o.shape) for o in m(torch.randn(2, 3, 40, 32))] == [(2, 4, 40, 32), (2, 3), (2, 4)]

# --- the model ---------------------------------------------------------------------------------------------------
def test_model_outputs_and_alphas():
    m = create_cross_stitch_model(resnet18, make_tasks(), pretrained=False, img_size=32, decoder='light')
    assert [tuple(o.shape) for o in m(torch.randn(2, 3, 40, 24))] == [(2, 4, 40, 24), (2, 3), (2, 4)]
    al = m.cross_stitch_alphas()
    assert list(al) == [f'stage{i}' for i in range(5)] and all(a.shape == (3, 3) for a in al.values())
    assert all(f.input is None for f in m.features)   # feature maps freed after the forward pass
    assert total_params(m.branches)[0] == 3 * total_params(create_mtl_body(resnet18, pretrained=False))[0]

def test_branches_start_equal_and_are_independent():
    m = create_cross_stitch_model(small_body(), make_tasks(), img_size=32)
    b0, b1 = m.branches[0], m.branches[1]
    assert all(torch.equal(p, q) for p,q in zip(b0.parameters(), b1.parameters()))
    assert not ({id(p) for p in b0.parameters()} & {id(p) for p in b1.parameters()})

def _perturbed(m, i):
    m2 = deepcopy(m)
    with torch.no_grad():
        for p in m2.branches[i].parameters(): p.add_(torch.randn_like(p))
    return m2

def test_heads_read_mixed_branches():
    "Each head reads its own branch after the units: with α selecting branch 1 only, the mask ignores branch 0"
    torch.manual_seed(0)
    m = create_cross_stitch_model(small_body(), make_tasks(), img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for u in m.units: u.alpha = torch.eye(3)
        for k in range(2):   # no mixing: task k depends on branch k only (the box head starts constant: not tested)
            assert torch.allclose(_perturbed(m, (k + 1) % 3)(x)[k], m(x)[k])
            assert not torch.allclose(_perturbed(m, k)(x)[k], m(x)[k])
        for u in m.units: u.alpha = torch.tensor([[0., 1., 0.]] * 3)
        assert torch.allclose(_perturbed(m, 0)(x)[0], m(x)[0])
        assert not torch.allclose(_perturbed(m, 1)(x)[0], m(x)[0])
        m.units[-1].alpha = torch.eye(3)   # the skips (earlier stages) come from branch 1, the last stage from branch 0
        assert not torch.allclose(_perturbed(m, 1)(x)[0], m(x)[0]) and not torch.allclose(_perturbed(m, 0)(x)[0], m(x)[0])

def test_alphas_get_gradients_through_model():
    m = create_cross_stitch_model(small_body(), make_tasks(), img_size=32, per_channel=True)
    outs = m(torch.randn(2, 3, 32, 32))
    sum(o.float().pow(2).mean() for o in outs).backward()
    assert all(u.weight.grad is not None and u.weight.grad.abs().sum() > 0 for u in m.units)
    assert m.units[0].alpha.shape == (3, 3, 8)

def test_bf16_autocast():
    m = create_cross_stitch_model(small_body(), make_tasks(), img_size=32, per_channel=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = m(torch.randn(2, 3, 32, 32))
        loss = sum(o.float().pow(2).mean() for o in outs)
    loss.backward()
    assert all(torch.isfinite(o.float()).all() for o in outs) and m.units[1].weight.grad is not None

def test_splitter_groups():
    m = create_cross_stitch_model(resnet18, make_tasks(), pretrained=False, img_size=32)
    g = cross_stitch_splitter(m)
    assert len(g) == 3 and sum(len(x) for x in g) == len(list(m.parameters()))
    ids = lambda ps: {id(p) for p in ps}
    assert ids(m.units.parameters()) | ids(m.heads.parameters()) == ids(g[-1])
    assert ids(g[0]) == ids(p for b in m.branches for p in b[:6].parameters())
    assert isinstance(m, MTLModel) and m.splits().map(len) == g.map(len)
    m2 = create_cross_stitch_model(small_body(), make_tasks(), img_size=32)
    assert len(cross_stitch_splitter(m2)) == 2

def test_decoder_option_and_errors():
    m = create_cross_stitch_model(small_body(), make_tasks(), img_size=32, decoder='light')
    assert m.heads.heads[0].light and isinstance(m.heads, MultiTaskHead)
    with pytest.raises(ValueError, match="unknown decoder"): create_cross_stitch_model(small_body(), make_tasks(), decoder='x')
    body = small_body()
    with pytest.raises(ValueError, match='same architecture'):
        CrossStitchModel([body, nn.Sequential(ConvLayer(3, 8, stride=2), ConvLayer(8, 16, stride=2))], make_tasks()[:2], 32)
    with pytest.raises(ValueError, match='one branch per task'): CrossStitchModel([body], make_tasks()[:2], 32)

# --- with mtl_learner ----------------------------------------------------------------------------------------------
def _finite(learn): return all(np.isfinite(v) for v in learn.recorder.values[-1])

def test_trains_with_missing_targets_and_freeze(synth):
    set_seed(0)
    dls = dls_of(synth, *make_tasks())
    learn = mtl_learner(dls, small_body(), architecture='cross_stitch', pretrained=False, img_size=32,
                        head_kwargs=dict(alpha_lr_mult=10.))
    assert isinstance(learn.model, CrossStitchModel)
    learn.freeze()
    trainable = {id(p) for p in learn.model.parameters() if p.requires_grad}
    assert {id(p) for p in learn.model.units.parameters()} <= trainable
    assert not all(p.requires_grad for p in learn.model.branches.parameters())
    learn.unfreeze()
    before = {k: v.clone() for k,v in learn.model.cross_stitch_alphas().items()}
    learn.fit(3, 3e-3)
    assert _finite(learn) and learn.recorder.losses[-1] < learn.recorder.losses[0]
    assert any(not torch.allclose(before[k], v) for k,v in learn.model.cross_stitch_alphas().items())
    names = learn.recorder.metric_names
    assert 'mask_miou' in names and 'colour_acc' in names and 'box_iou' in names

def test_fine_tune_predict_export(synth, tmp_path):
    set_seed(0)
    path, df = synth
    learn = mtl_learner(dls_of(synth, *make_tasks()), small_body(), architecture='cross_stitch', pretrained=False,
                        img_size=32, decoder='light')
    learn.fine_tune(1, 1e-3, freeze_epochs=1)
    assert _finite(learn)
    fn = path/df.fn.iloc[0]
    pred = learn.predict(fn)
    assert set(pred.keys()) == {'mask', 'colour', 'box'} and pred['mask'].shape == (32, 32)
    learn.export(tmp_path/'cs.pkl')
    learn2 = load_learner(tmp_path/'cs.pkl')
    p2 = learn2.predict(fn)
    assert torch.equal(p2['mask'], pred['mask']) and torch.allclose(p2['box'], pred['box'])
    assert torch.allclose(p2['colour'][1], pred['colour'][1])
    assert all(torch.equal(a, b) for a,b in zip(learn2.model.cross_stitch_alphas().values(), learn.model.cross_stitch_alphas().values()))

@pytest.mark.skipif(importlib.util.find_spec('fastai_mtl.weighting') is None, reason='fastai_mtl.weighting not there yet')
@pytest.mark.parametrize('weighting', ['dwa', 'uncertainty'])
def test_with_weighting(synth, weighting, tmp_path):
    learn = mtl_learner(dls_of(synth, *make_tasks()), small_body(), architecture='cross_stitch', pretrained=False,
                        img_size=32, weighting=weighting)
    learn.fit(2, 3e-3)
    assert _finite(learn)
    w = learn.model.weighting   # the model's slot, its parameters in the last group
    assert learn.weighting is w and {id(p) for p in w.parameters()} <= {id(p) for p in learn.model.splits()[-1]}
    learn.export(tmp_path/'w.pkl'); load_learner(tmp_path/'w.pkl')

@pytest.mark.parametrize('sampler', ['task', 'epoch'])
def test_with_other_samplers(synth, sampler):
    learn = mtl_learner(dls_of(synth, *make_tasks()), small_body(), architecture='cross_stitch', pretrained=False,
                        img_size=32, sampler=sampler)
    learn.fit(1, 3e-3)
    assert _finite(learn)

def test_plot(synth):
    import matplotlib; matplotlib.use('Agg')
    learn = mtl_learner(dls_of(synth, *make_tasks()), small_body(), architecture='cross_stitch', pretrained=False,
                        img_size=32, head_kwargs=dict(per_channel=True))
    fig = learn.plot_cross_stitch()
    assert len(fig.axes) == 3 and fig.axes[0].get_title().startswith('stage0')
    import matplotlib.pyplot as plt; plt.close(fig)
    hard = mtl_learner(dls_of(synth, *make_tasks()), small_body(), pretrained=False, img_size=32)
    with pytest.raises(TypeError, match='no cross-stitch'): hard.plot_cross_stitch()

# --- feature transfer -----------------------------------------------------------------------------------------------
def test_transfer_keeps_aux_frozen_and_trains(synth, tmp_path):
    set_seed(0)
    path, df = synth
    aux_cls = mtl_learner(dls_of(synth, ClassificationTask('colour')), small_body(), pretrained=False, img_size=32)
    aux_box = mtl_learner(dls_of(synth, BoxTask()), small_body(), pretrained=False, img_size=32)
    aux_cls.fit(1, 1e-3)
    body = small_body()
    learn = transfer_learner(dls_of(synth, SegmentationTask('mask', SHAPE_CODES)), body, aux=[aux_cls, aux_box.model],
                             pretrained=False, img_size=32, decoder='light')
    m = learn.model
    assert m.branch_names == ['mask', 'colour', 'box'] and len(m.branches) == 1 and len(m.aux) == 2
    assert torch.allclose(m.cross_stitch_alphas()['stage0'], torch.tensor([[.9, .05, .05]]))
    # copies: the aux learners' own models are untouched (still trainable, hooks of their decoders intact)
    assert all(p.requires_grad for p in aux_cls.model.parameters())
    assert all(not f.body._forward_hooks for f in m.aux)
    sd = {k: v.clone() for k,v in m.aux.state_dict().items()}
    learn.unfreeze()
    in_groups = {id(p) for g in learn.opt.param_lists for p in g}
    assert not any(id(p) in in_groups for p in m.aux.parameters())
    assert {id(p) for p in m.units.parameters()} | {id(p) for p in m.branches.parameters()} <= in_groups
    learn.fit(1, 3e-3)
    assert _finite(learn)
    assert all(torch.equal(v, m.aux.state_dict()[k]) for k,v in sd.items())     # weights and BN statistics
    assert not any(p.requires_grad for p in m.aux.parameters())
    m.train(); assert not any(mod.training for a in m.aux for mod in a.modules())
    assert learn.arch is body
    # (compared on a batch: `predict`/`get_preds` of a one-task learner hit fastai's `detuplify` of a 1-tuple output)
    xb = learn.dls.valid.one_batch()[0]
    learn.export(tmp_path/'oeq.pkl')
    learn2 = load_learner(tmp_path/'oeq.pkl')
    with torch.no_grad(): (y,), (y2,) = learn.model.eval()(xb), learn2.model.eval().to(xb.device)(xb)
    assert torch.allclose(y, y2)
    assert not any(p.requires_grad for p in learn2.model.aux.parameters())

def test_transfer_target_from_trained_learner_and_errors(synth):
    set_seed(0)
    seg = SegmentationTask('mask', SHAPE_CODES)
    base = mtl_learner(dls_of(synth, seg), small_body(), pretrained=False, img_size=32)
    aux = mtl_learner(dls_of(synth, ClassificationTask('colour')), small_body(), pretrained=False, img_size=32)
    m = create_transfer_model(base, [seg], aux=[aux], img_size=32)
    assert all(torch.equal(p, q) for p,q in zip(m.branches[0].parameters(), base.model.body.parameters()))
    assert m.branches[0] is not base.model.body
    with pytest.raises(ValueError, match='no aux'): create_transfer_model(small_body(), [seg], aux=[], img_size=32)
    with pytest.raises(ValueError, match='target task'):
        transfer_learner(dls_of(synth, seg, ClassificationTask('colour')), small_body(), aux=[aux], tasks=[seg],
                         pretrained=False, img_size=32)
    other = nn.Sequential(ConvLayer(3, 8, stride=2), ConvLayer(8, 16, stride=2))
    with pytest.raises(ValueError, match='same architecture'): create_transfer_model(small_body(), [seg], aux=[other], img_size=32)
    # a cross-stitch model gives each task's branch as an aux encoder; as the start of the target's branch it is ambiguous
    cs = create_cross_stitch_model(small_body(), make_tasks()[:2], img_size=32)
    t = create_transfer_model(small_body(), [seg], aux=[cs], img_size=32)
    assert t.branch_names == ['mask', 'mask', 'colour'] and len(t.aux) == 2
    with pytest.raises(TypeError, match='one encoder per task'): create_transfer_model(cs, [seg], aux=[aux], img_size=32)

def test_transfer_warns_on_other_normalisation(synth):
    seg = SegmentationTask('mask', SHAPE_CODES)
    aux = mtl_learner(dls_of(synth, ClassificationTask('colour')), resnet18, pretrained=False, decoder='light')
    with pytest.warns(UserWarning, match='normalised'):
        transfer_learner(dls_of(synth, seg), resnet18, aux=[aux], pretrained=False, decoder='light',
                         weights=create_mtl_body(resnet18, pretrained=False).state_dict())

class _PadConv(nn.Conv2d):
    "A convolution holding its padding as a sub-module (as EfficientNet's 'same' padding does)"
    def __init__(self, *a, **k): super().__init__(*a, **k); self.pad = nn.ZeroPad2d(1)
    def forward(self, x): return super().forward(self.pad(x))

def test_body_with_padding_submodules():
    body = nn.Sequential(_PadConv(3, 8, 3, stride=2), _PadConv(8, 16, 3, stride=2))
    ranges, shapes = body_stages(body, 32)
    assert ranges == [(0, 1), (1, 2)] and [tuple(s) for s in shapes] == [(8, 16, 16), (16, 8, 8)]
