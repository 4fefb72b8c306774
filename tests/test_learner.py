"Issue 4: `mtl_learner` end to end: the masked loss, metrics through `validate`, training, inference in source coordinates, export, mixed precision, backbones, offline weights."
import math
import numpy as np, pandas as pd, pytest, torch
import torch.nn.functional as F
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from pathlib import Path
from PIL import Image
from torchvision.ops import box_iou, distance_box_iou_loss
from fastai.vision.all import (resnet18, Resize, PILImage, PILImageBW, ConvLayer, Callback, TimmBody,
                               Normalize, imagenet_stats, set_seed, vision_learner, noop, load_learner, nn, in_channels,
                               CancelEpochException)
from fastai_mtl.core import IGNORE_INDEX, MISSING_LABEL
from fastai_mtl.tasks import SegmentationTask, ClassificationTask, BoxTask
from fastai_mtl.data import MTLDataLoaders, mtl_datablock
from fastai_mtl.model import MultiTaskHead, PretrainedWeightsError
from fastai_mtl.learner import MaskedMultiLoss, mtl_metrics, mtl_learner, MTLLearner
from fastai_mtl.weighting import StaticWeighting
from fastai_mtl.synth import synth_shapes, SHAPE_CODES

NAN = float('nan')

def _tasks(): return [SegmentationTask('mask', SHAPE_CODES), ClassificationTask('colour'), BoxTask()]

def _dls(path, df, tasks=None, bs=8, **kw):
    return MTLDataLoaders.from_df(df, path, 'fn', tasks or _tasks(), valid_col='is_valid', bs=bs, num_workers=0, **kw)

def _learner(dls, arch=resnet18, **kw): return mtl_learner(dls, arch, pretrained=False, decoder='light', **kw)

@pytest.fixture(scope='module')
def synth():
    "96 shapes at 32 px; each target missing on part of the images; 19 validation images (3 batches of 8)"
    return synth_shapes(96, size=32, seed=4, missing={'mask': 0.4, 'colour': 0.25, 'box': 0.3})

@pytest.fixture(scope='module')
def trained(synth):
    "A learner fitted for one epoch (its predictions are not constant); tests must not change it"
    set_seed(1, reproducible=True)
    learn = _learner(_dls(*synth))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    return learn

def _per_task_sets(learn):
    "Raw outputs and targets of the whole validation set, in order"
    preds, targs = learn.get_preds(act=noop)
    return [p.float() for p in preds], list(targs)

# ---------------------------------------------------------------------------------------------------------------
# MaskedMultiLoss
def _seg_ce(p, m):
    "Cross-entropy averaged over the labelled pixels of masks `m`, by hand"
    lab = m != IGNORE_INDEX
    if not lab.any(): return torch.tensor(0.)
    logp = F.log_softmax(p.float(), 1)                     # (bs, c, h, w)
    picked = logp.gather(1, m.long().where(lab, 0)[:, None])[:, 0]
    return -picked[lab].mean()

def _cls_ce(p, y):
    lab = y != MISSING_LABEL
    return -F.log_softmax(p.float(), 1)[lab, y[lab]].mean() if lab.any() else torch.tensor(0.)

def _box_diou(p, y):
    lab = ~y.view(-1, 4).isnan().any(1)
    return distance_box_iou_loss(p.view(-1, 4)[lab].float(), y.view(-1, 4)[lab].float(), reduction='mean') \
        if lab.any() else torch.tensor(0.)

def _batch():
    "3 samples: a mask on samples 0 and 1 (sample 1 with ignored pixels), a label on 0 and 2, a box on sample 1 only"
    torch.manual_seed(0)
    seg = torch.randn(3, 3, 4, 5, requires_grad=True)
    cls = torch.randn(3, 4, requires_grad=True)
    box = torch.tensor([[-.5, -.5, .5, .5], [-.6, -.2, .3, .8], [0., 0., .5, .5]], requires_grad=True)
    m = torch.randint(0, 3, (3, 4, 5)); m[1, :2] = IGNORE_INDEX; m[2] = IGNORE_INDEX
    y = torch.tensor([2, MISSING_LABEL, 0])
    b = torch.tensor([[[NAN]*4], [[-.5, -.4, .4, .6]], [[NAN]*4]])
    return (seg, cls, box), (m, y, b)

def _tasks_with_vocab():
    return [SegmentationTask('m', ['a', 'b', 'c']), ClassificationTask('c', vocab=list('wxyz')), BoxTask()]

def test_masked_multi_loss_by_hand():
    ts = _tasks_with_vocab()
    lf = MaskedMultiLoss(ts, weighting=StaticWeighting([1., .5, 2.]).setup(ts))
    (seg, cls, box), (m, y, b) = _batch()
    loss = lf((seg, cls, box), m, y, b)
    hand = [_seg_ce(seg.detach(), m), _cls_ce(cls.detach(), y), _box_diou(box.detach(), b)]
    assert torch.allclose(lf.last_losses, torch.stack(hand), atol=1e-5)
    assert lf.last_counts.tolist() == [20 + 10, 2, 1]                # labelled pixels, labels, boxes
    assert torch.allclose(loss, hand[0] + .5*hand[1] + 2*hand[2], atol=1e-5)
    loss.backward()
    assert (seg.grad[2] == 0).all() and (seg.grad[1][:, :2] == 0).all()       # missing mask, ignored pixels
    assert (seg.grad[0].abs().sum((1, 2)) > 0).all() and (seg.grad[1][:, 2:].abs().sum() > 0)
    assert (cls.grad[1] == 0).all() and (cls.grad[[0, 2]] != 0).any(1).all()
    assert (box.grad[[0, 2]] == 0).all() and (box.grad[1] != 0).any()
    lf.weighting = StaticWeighting([1., .5, 0.]).setup(ts)          # the weighting makes the total
    assert torch.allclose(lf((seg, cls, box), m, y, b), hand[0] + .5*hand[1], atol=1e-5)

def test_masked_multi_loss_all_missing():
    lf = MaskedMultiLoss(_tasks_with_vocab())
    (seg, cls, box), _ = _batch()
    m, y, b = torch.full((3, 4, 5), IGNORE_INDEX), torch.full((3,), MISSING_LABEL), torch.full((3, 1, 4), NAN)
    loss = lf((seg, cls, box), m, y, b)
    assert loss.item() == 0 and lf.last_counts.tolist() == [0, 0, 0] and not lf.last_losses.isnan().any()
    loss.backward()
    for p in (seg, cls, box): assert p.grad is not None and (p.grad == 0).all() and not p.grad.isnan().any()
    # one task missing in the whole batch, the others present: that head alone gets no gradient
    (seg, cls, box), (m, y, b) = _batch()
    lf((seg, cls, box), m, torch.full((3,), MISSING_LABEL), b).backward()
    assert (cls.grad == 0).all() and seg.grad.abs().sum() > 0 and box.grad.abs().sum() > 0

def test_masked_multi_loss_reduction_none():
    ts = _tasks_with_vocab()
    lf = MaskedMultiLoss(ts, weighting=StaticWeighting([1., .5, 2.]).setup(ts))
    (seg, cls, box), (m, y, b) = _batch()
    lf.reduction = 'none'
    per = lf((seg, cls, box), m, y, b)
    assert per.shape == (3,)
    for i in range(3):
        own = _seg_ce(seg[i:i+1].detach(), m[i:i+1]) + .5*_cls_ce(cls[i:i+1].detach(), y[i:i+1]) \
              + 2*_box_diou(box[i:i+1].detach(), b[i:i+1])
        assert torch.allclose(per[i], own, atol=1e-5), i
    assert torch.allclose(per[2], .5*_cls_ce(cls[2:].detach(), y[2:]))  # sample 2: its label only

def test_get_preds_with_loss_per_sample(trained):
    learn = trained
    preds, targs, losses = learn.get_preds(with_loss=True, act=noop)
    assert learn.loss_func.reduction == 'mean'                        # restored
    n = len(learn.dls.valid.items)
    assert losses.shape == (n,)
    for i in range(n):
        own = _seg_ce(preds[0][i:i+1], targs[0][i:i+1]) + _cls_ce(preds[1][i:i+1], targs[1][i:i+1]) \
              + _box_diou(preds[2][i:i+1], targs[2][i:i+1])
        assert torch.allclose(losses[i], own, atol=1e-4), i

# ---------------------------------------------------------------------------------------------------------------
# Metrics through a real `validate`
def _confusion(pred, targ, n):
    lab = targ != IGNORE_INDEX
    cm = np.zeros((n, n))
    for t, p in zip(targ[lab].tolist(), pred[lab].tolist()): cm[t, p] += 1
    return cm

def _miou_dice(cm):
    ious, dices = [], []
    for c in range(len(cm)):
        tp, nt, npred = cm[c, c], cm[c].sum(), cm[:, c].sum()
        if nt + npred == 0: continue
        ious.append(tp/(nt + npred - tp)); dices.append(2*tp/(nt + npred))
    return np.mean(ious), np.mean(dices)

def test_validate_metrics_by_hand(trained):
    learn = trained
    vals = learn.validate()
    res = dict(zip(['valid_loss'] + [m.name for m in learn.metrics], vals))
    assert list(res) == ['valid_loss', 'mask_loss', 'mask_miou', 'mask_dice', 'colour_loss', 'colour_acc',
                         'box_loss', 'box_iou']
    (seg, cls, box), (m, y, b) = _per_task_sets(learn)
    miou, dice = _miou_dice(_confusion(seg.argmax(1), m, len(SHAPE_CODES)))
    lab = y != MISSING_LABEL
    acc = (cls.argmax(1)[lab] == y[lab]).float().mean().item()
    hb = ~b.view(-1, 4).isnan().any(1)
    iou = box_iou(box[hb], b.view(-1, 4)[hb]).diag().mean().item()
    assert 0 < lab.sum() < len(y) and 0 < hb.sum() < len(y) and (m == IGNORE_INDEX).all((1, 2)).any()   # partial labels
    for k, v in dict(mask_miou=miou, mask_dice=dice, colour_acc=acc, box_iou=iou,
                     mask_loss=_seg_ce(seg, m), colour_loss=_cls_ce(cls, y), box_loss=_box_diou(box, b)).items():
        assert math.isclose(res[k], float(v), rel_tol=1e-4, abs_tol=1e-5), (k, res[k], float(v))
    # valid_loss: fastai's mean of the batches' (summed) losses, weighted by batch size
    bs, tot = learn.dls.valid.bs, 0.
    for s in range(0, len(y), bs):
        sl = slice(s, s + bs)
        tot += len(y[sl]) * float(_seg_ce(seg[sl], m[sl]) + _cls_ce(cls[sl], y[sl]) + _box_diou(box[sl], b[sl]))
    assert math.isclose(res['valid_loss'], tot/len(y), rel_tol=1e-4)
    # per-task losses are means over the labelled items of the whole set, not means of the batches' means
    batch_means = [float(_cls_ce(cls[s:s+bs], y[s:s+bs])) for s in range(0, len(y), bs)]
    assert len(batch_means) > 1 and not math.isclose(res['colour_loss'], np.mean(batch_means), rel_tol=1e-3)

# ---------------------------------------------------------------------------------------------------------------
# vision_learner with a custom head
def test_vision_learner_custom_head(synth):
    dls = _dls(*synth)
    tasks = dls.tasks
    learn = vision_learner(dls, resnet18, pretrained=False, custom_head=MultiTaskHead(tasks, nf=512),
                           loss_func=MaskedMultiLoss(tasks), metrics=mtl_metrics(tasks), n_out=sum(dls.c))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    vals = learn.recorder.values[-1]
    assert len(vals) == 2 + len(learn.metrics) and all(v is not None and np.isfinite(v) for v in vals)
    fn = synth[0]/synth[1].fn.iloc[0]
    preds, targs = learn.get_preds(dl=dls.test_dl([fn, fn]))
    assert [tuple(p.shape) for p in preds] == [(2, len(SHAPE_CODES), 32, 32), (2, 3), (2, 4)]
    dec, _, probs = learn.predict(fn)   # fastai's own `Learner.predict`: every task decoded, at the model's size
    assert len(dec) == 3 and dec[0].shape == (32, 32) and dec[1] in dls.tasks[1].vocab and dec[2].shape == (1, 4)
    assert torch.allclose(probs.sum(1), torch.ones(1, 32, 32))   # fastai returns the first output's probabilities

# ---------------------------------------------------------------------------------------------------------------
# fine_tune reaches clearly-above-chance metrics for every task
def _baselines(df, path):
    "Majority class accuracy, background-only mean IoU, best fixed central box IoU on the validation set"
    tr, va = df[~df.is_valid], df[df.is_valid]
    lab = va.colour.dropna()
    majority = (lab == tr.colour.dropna().mode()[0]).mean()
    masks = [np.array(Image.open(path/f)) for f in va['mask'].dropna()]
    cm = sum(_confusion(torch.zeros(mk.shape, dtype=torch.long), torch.tensor(mk.astype(np.int64)), len(SHAPE_CODES))
             for mk in masks)
    bg_miou = _miou_dice(cm)[0]
    b = torch.tensor(va[['x1', 'y1', 'x2', 'y2']].dropna().values, dtype=torch.float)
    size = 32
    best_box = max(box_iou(torch.tensor([[c - s/2, c - s/2, c + s/2, c + s/2]]), b).mean().item()
                   for s in range(4, size + 1) for c in [size/2])
    return majority, bg_miou, best_box

def fine_tune_synth(seed=0):
    "`fine_tune` a small CNN body from scratch on 600 synthetic shapes with partial labels, 32 px: metrics and baselines"
    path, df = synth_shapes(600, size=32, seed=seed, max_distractors=0, missing={'mask': 0.3, 'colour': 0.2, 'box': 0.3})
    set_seed(seed, reproducible=True)
    dls = _dls(path, df, bs=16)
    body = nn.Sequential(ConvLayer(3, 32, stride=2), ConvLayer(32, 64, stride=2), ConvLayer(64, 128, stride=2),
                         ConvLayer(128, 128))
    learn = _learner(dls, body)
    # from scratch: the body needs the full learning rate once unfrozen (lr_mult=1)
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(5, 3e-3, freeze_epochs=1, lr_mult=1)
    return dict(zip(learn.recorder.metric_names[1:], learn.recorder.values[-1])), _baselines(df, path)

@pytest.mark.slow
def test_fine_tune_above_chance():
    res, (majority, bg_miou, best_box) = fine_tune_synth()
    assert res['colour_acc'] > majority + 0.25, (res, majority)
    assert res['mask_miou'] > bg_miou + 0.08, (res, bg_miou)
    assert res['box_iou'] > best_box + 0.05, (res, best_box)

def test_box_head_beats_the_constant_box():
    "In a few seconds on synthetic shapes the default box head is far above the mean box, the old pooled head is not"
    from fastai_mtl.layers import BoxHead, PooledBoxHead
    from fastai_mtl.demo import demo_body
    path, df = synth_shapes(400, size=32, seed=1)
    res = {}
    for head in (BoxHead, PooledBoxHead):
        set_seed(0, reproducible=True)
        dls = _dls(path, df, [BoxTask(head=head)], bs=32)
        learn = mtl_learner(dls, demo_body(widths=(16, 32, 64)), pretrained=False)
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(5, 3e-3)
        res[head.__name__] = learn.validate()[-1]
    const = learn.baseline()['box_iou']
    assert res['BoxHead'] > const + 0.2 and res['BoxHead'] > res['PooledBoxHead'] + 0.1, (res, const)

def test_box_task_starts_at_the_mean_training_box(synth):
    from fastai_mtl.layers import params_to_box
    path, df = synth
    dls = _dls(path, df, size=48)       # squished 32 -> 48 px: the scaled coordinates do not change
    t = dls.tasks[2]
    rows = df[~df.is_valid & df.x1.notna()]
    mean = torch.tensor((rows[['x1', 'y1', 'x2', 'y2']].values / 32 * 2 - 1).mean(0), dtype=torch.float)
    assert torch.allclose(t.mean_box, mean, atol=1e-5)
    learn = _learner(dls)
    assert torch.allclose(params_to_box(learn.model.heads.heads[2].mlp[-1].bias.detach()), mean, atol=1e-4)

# ---------------------------------------------------------------------------------------------------------------
# freeze / unfreeze, discriminative learning rates, lr_find
def _snapshot(m): return [p.detach().clone() for p in m.parameters()]
def _changed(before, m): return [not torch.equal(a, p) for a, p in zip(before, m.parameters())]

def test_freeze_unfreeze_discriminative_lrs(synth):
    learn = _learner(_dls(*synth))
    body, head = learn.model.body, learn.model.heads
    learn.freeze()
    assert len(learn.opt.param_groups) == 3                           # resnet split: stem+layer1-2, layer3-4, heads
    convs = [m.weight for m in body.modules() if isinstance(m, nn.Conv2d)]
    bns = [p for m in body.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    assert not any(c.requires_grad for c in convs) and all(p.requires_grad for p in bns)   # fastai's train_bn
    assert all(p.requires_grad for p in head.parameters())
    b_convs, b_head = [c.detach().clone() for c in convs], _snapshot(head)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, lr=slice(1e-5, 1e-3))
    assert all(torch.equal(a, c) for a, c in zip(b_convs, convs))     # frozen convolutions did not move
    assert sum(_changed(b_head, head)) > len(b_head)//2
    assert [h['lr'] for h in learn.opt.hypers] == pytest.approx([1e-5, 1e-4, 1e-3])
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())
    b_convs = [c.detach().clone() for c in convs]
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, lr_max=slice(1e-4, 1e-2))
    assert all(not torch.equal(a, c) for a, c in zip(b_convs, convs))
    lrs = [h['lr'] for h in learn.opt.hypers]
    assert lrs[0] < lrs[1] < lrs[2] and lrs[2]/lrs[0] == pytest.approx(100)

def test_lr_find(synth):
    learn = _learner(_dls(*synth))
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with learn.no_bar(), learn.no_logging(): sug = learn.lr_find(num_it=8, show_plot=False)
    assert 1e-7 < sug.valley < 10 and len(learn.recorder.lrs) > 2
    assert learn.recorder.lrs[-1] > learn.recorder.lrs[0] and all(np.isfinite(learn.recorder.losses))
    after = learn.model.state_dict()                                  # the weights are restored afterwards
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith('num_batches_tracked'))

# ---------------------------------------------------------------------------------------------------------------
# Inference in the source image's coordinates
W, H = 50, 30   # source images: wider than high, and not the model's size (32)
COLOURS = {'red': (220, 40, 40), 'green': (40, 200, 40), 'blue': (40, 40, 220)}

@pytest.fixture(scope='module')
def rects(tmp_path_factory):
    "24 images 50x30: a coloured rectangle (mask code 1, label its colour, box its outline) inside x in [12, 38]"
    path = tmp_path_factory.mktemp('rects')
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        x1, y1 = int(rng.integers(12, 24)), int(rng.integers(2, 14))
        x2, y2 = x1 + int(rng.integers(6, 38 - x1 + 1)), y1 + int(rng.integers(6, 28 - y1 + 1))
        col = list(COLOURS)[i % 3]
        img = rng.integers(0, 60, (H, W, 3)).astype(np.uint8); img[y1:y2, x1:x2] = COLOURS[col]
        m = np.zeros((H, W), np.uint8); m[y1:y2, x1:x2] = 1
        Image.fromarray(img).save(path/f'{i}.png'); Image.fromarray(m).save(path/f'{i}_m.png')
        rows.append(dict(fn=f'{i}.png', mask=f'{i}_m.png', colour=col, x1=x1, y1=y1, x2=x2, y2=y2, is_valid=i >= 16))
    return path, pd.DataFrame(rows)

def _rect_tasks(): return [SegmentationTask('mask', ['background', 'rect']), ClassificationTask('colour'), BoxTask()]

# Where the source image lies in the model's input (scaled coords, [-1, 1]) after `Resize(32, method)`, by hand:
# squish stretches 50x30 to 32x32; crop keeps the central 30x30 (x in [10, 40]); pad pads 10 rows above and below.
TO_INPUT = {'squish': lambda x, y: (x/W*2 - 1, y/H*2 - 1),
            'crop':   lambda x, y: ((x - 10)/30*2 - 1, y/30*2 - 1),
            'pad':    lambda x, y: (x/W*2 - 1, (y + 10)/W*2 - 1)}

def _box_to_input(method, box):
    (u1, v1), (u2, v2) = TO_INPUT[method](box[0], box[1]), TO_INPUT[method](box[2], box[3])
    return torch.tensor([u1, v1, u2, v2])

class FixedOutputs(nn.Module):
    "A stand-in model answering, for any input, a mask of code 1 inside `box` (scaled coords), fixed logits and `box`"
    def __init__(self, box, size=32, n_cls=3):
        super().__init__()
        c = (torch.arange(size) + 0.5)/size*2 - 1
        inside = ((c[None] > box[0]) & (c[None] < box[2]) & (c[:, None] > box[1]) & (c[:, None] < box[3])).float()
        self.register_buffer('seg', torch.stack([-5*inside, 5*inside])[None])
        self.register_buffer('cls', torch.arange(n_cls).float()[None])
        self.register_buffer('box', box[None])
        self.dummy = nn.Parameter(torch.zeros(1))
    def forward(self, x):
        bs = x.shape[0]
        return self.seg.expand(bs, -1, -1, -1), self.cls.expand(bs, -1), self.box.expand(bs, -1)

@pytest.mark.parametrize('method', ['squish', 'crop', 'pad'])
def test_predict_in_source_coordinates(rects, method):
    path, df = rects
    dls = MTLDataLoaders.from_df(df, path, 'fn', _rect_tasks(), valid_col='is_valid', bs=4, num_workers=0,
                                 item_tfms=Resize(32, method=method))
    row = dls.valid.items.iloc[0]
    src_box = torch.tensor(row[['x1', 'y1', 'x2', 'y2']].values.astype(np.float32))
    in_box = _box_to_input(method, src_box)
    # the pipeline maps the known box exactly as worked out by hand
    b = dls.valid.one_batch()
    assert torch.allclose(b[3][0].view(4).cpu(), in_box, atol=1e-5)
    learn = _learner(dls)
    fn = path/row.fn
    # the real model: shapes and types at the source size
    res = learn.predict(fn)
    assert list(res.keys()) == ['mask', 'colour', 'box']
    assert res['mask'].shape == (H, W) and res['mask'].dtype == torch.long
    lbl, probs = res['colour']
    assert lbl in COLOURS and probs.shape == (3,) and math.isclose(probs.sum().item(), 1, rel_tol=1e-5)
    assert lbl == dls.tasks[1].vocab[int(probs.argmax())]
    assert res['box'].shape == (4,) and res['box'].isfinite().all()
    res_pil = learn.predict(PILImage.create(fn))                          # a PIL image gives the same result
    assert torch.equal(res_pil['mask'], res['mask']) and torch.allclose(res_pil['box'], res['box'])
    assert torch.allclose(res_pil['colour'][1], probs)
    # a model answering the image's own (input-space) box and mask: predict maps them back onto the source
    learn.model = FixedOutputs(in_box)
    res = learn.predict(fn)
    assert torch.allclose(res['box'], src_box, atol=1e-4), (res['box'], src_box)
    assert res['colour'][0] == dls.tasks[1].vocab[2] and math.isclose(res['colour'][1].sum().item(), 1, rel_tol=1e-5)
    m = res['mask']
    xc, yc = torch.arange(W) + 0.5, torch.arange(H) + 0.5
    d = 2.   # source pixels this far inside/outside the rectangle must be classified exactly
    inner = (xc[None] > src_box[0] + d) & (xc[None] < src_box[2] - d) & (yc[:, None] > src_box[1] + d) & (yc[:, None] < src_box[3] - d)
    outer = (xc[None] < src_box[0] - d) | (xc[None] > src_box[2] + d) | (yc[:, None] < src_box[1] - d) | (yc[:, None] > src_box[3] + d)
    visible = torch.ones(H, W, dtype=torch.bool)
    if method == 'crop': visible[:, :10] = visible[:, 40:] = False     # cut off by the central crop: unknown
    assert (m[~visible] == IGNORE_INDEX).all() and (m[visible] != IGNORE_INDEX).all()
    assert (m[inner & visible] == 1).all() and (m[outer & visible] == 0).all()
    src_mask = torch.from_numpy(np.array(Image.open(path/row['mask']))).long()
    assert (m[visible] == src_mask[visible]).float().mean() > 0.9

def test_get_preds_on_test_sets(rects):
    path, df = rects
    dls = MTLDataLoaders.from_df(df, path, 'fn', _rect_tasks(), valid_col='is_valid', bs=4, num_workers=0,
                                 item_tfms=Resize(32, method='squish'))
    learn = _learner(dls)
    ref, ref_targs = learn.get_preds()                                 # the validation set
    va = df[df.is_valid]
    for items in ([path/f for f in va.fn], va, va.reset_index(drop=True)):
        preds = learn.get_preds(dl=dls.test_dl(items))[0]
        assert [tuple(p.shape) for p in preds] == [(8, 2, 32, 32), (8, 3), (8, 4)]
        for p, r in zip(preds, ref): assert torch.allclose(p, r, atol=1e-5)
    preds, targs = learn.get_preds(dl=dls.test_dl(va, with_labels=True))   # a DataFrame with its targets
    for t, r in zip(targs, ref_targs): assert torch.equal(t.nan_to_num(-9), r.nan_to_num(-9))

def test_show_results_draws_every_task(trained):
    plt.close('all')
    trained.show_results(max_n=3, shuffle=False)
    axs = plt.gcf().axes
    assert len(axs) == 6
    items = trained.dls.valid.items.iloc[:3]
    for i, (_, row) in enumerate(items.iterrows()):
        targ, pred = axs[2*i], axs[2*i + 1]
        assert targ.get_title(loc='left').startswith('target') and pred.get_title(loc='left').startswith('prediction')
        # the prediction shows every task: a mask overlay on the image, a colour, a box
        assert len(pred.images) == 1 and 'colour: ' in pred.get_title(loc='left') and len(pred.patches) >= 1
        assert 'mask: ' in pred.get_title(loc='left')   # (a mask's regions are outlined: contour lines, not another image)
        # the target shows what the sample has, and 'missing' for what it lacks
        t = targ.get_title(loc='left')
        assert ('mask: missing' in t) == pd.isna(row['mask']) and len(targ.images) == 1
        if pd.isna(row['mask']): assert not targ.collections                   # nothing outlined without a mask
        assert (f"colour: {row.colour}" in t) if not pd.isna(row.colour) else 'colour: missing' in t
        assert ('box: missing' in t) == pd.isna(row.x1) and (len(targ.patches) > 0) == (not pd.isna(row.x1))
    plt.close('all')

# ---------------------------------------------------------------------------------------------------------------
# Export, save / load
def test_export_load_learner(trained, synth, tmp_path):
    fn = synth[0]/synth[1].fn[synth[1].is_valid].iloc[0]
    ref = trained.predict(fn)
    trained.export(tmp_path/'mtl.pkl')
    learn2 = load_learner(tmp_path/'mtl.pkl')
    assert isinstance(learn2, MTLLearner)
    res = learn2.predict(fn)
    assert torch.equal(res['mask'], ref['mask']) and res['colour'][0] == ref['colour'][0]
    assert torch.allclose(res['colour'][1], ref['colour'][1]) and torch.allclose(res['box'], ref['box'])
    files = [synth[0]/f for f in synth[1].fn[:5]]
    a, b = trained.get_preds(dl=trained.dls.test_dl(files))[0], learn2.get_preds(dl=learn2.dls.test_dl(files))[0]
    for x, y in zip(a, b): assert torch.allclose(x, y)

def test_save_load(trained, synth, tmp_path):
    old_path, trained.path = trained.path, tmp_path
    try: trained.save('m')
    finally: trained.path = old_path
    learn2 = _learner(_dls(*synth), path=tmp_path)
    fresh = learn2.get_preds()[0]
    learn2.load('m')
    ref, res = trained.get_preds()[0], learn2.get_preds()[0]
    for x, y, f in zip(ref, res, fresh): assert torch.allclose(x, y) and not torch.allclose(x, f)

# ---------------------------------------------------------------------------------------------------------------
# Mixed precision
class DtypeSpy(Callback):
    "Records the dtype of every output of the model in each training batch"
    def before_fit(self): self.dtypes = []
    def after_pred(self):
        if self.training: self.dtypes.append([p.dtype for p in self.pred])

def _few_batches(n):
    class Stop(Callback):
        order = 100
        def after_batch(self):
            if self.training and self.iter + 1 >= n: raise CancelEpochException()
    return Stop()

def test_bf16_on_cpu(synth):
    set_seed(0)
    learn = _learner(_dls(*synth), cbs=DtypeSpy()).to_bf16()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=_few_batches(4))
    dtypes = learn.dtype_spy.dtypes
    assert len(dtypes) == 4 and all(d == [torch.bfloat16]*3 for d in dtypes), dtypes   # autocast was active
    assert all(np.isfinite(l) for l in learn.recorder.losses) and len(learn.recorder.losses) == 4
    assert all(p.dtype == torch.float32 and p.isfinite().all() for p in learn.model.parameters())
    preds = learn.get_preds()[0]
    assert all(p.isfinite().all() for p in preds)
    plain = _learner(_dls(*synth), cbs=DtypeSpy())                    # without to_bf16: float32 outputs
    with plain.no_bar(), plain.no_logging(): plain.fit(1, 1e-3, cbs=_few_batches(1))
    assert plain.dtype_spy.dtypes == [[torch.float32]*3]

@pytest.mark.skipif(not torch.cuda.is_available(), reason='fp16 mixed precision needs CUDA')
def test_fp16_on_cuda(synth):
    learn = _learner(_dls(*synth), cbs=DtypeSpy()).to_fp16()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=_few_batches(4))
    assert all(d[:2] == [torch.float16]*2 for d in learn.dtype_spy.dtypes)
    assert all(np.isfinite(l) for l in learn.recorder.losses)

# ---------------------------------------------------------------------------------------------------------------
# Backbones through mtl_learner
def _fits_and_predicts(learn, synth, n_in=3):
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=_few_batches(2))
    assert all(np.isfinite(l) for l in learn.recorder.losses)
    res = learn.predict(synth[0]/synth[1].fn.iloc[0])
    assert res['mask'].shape == (32, 32) and res['box'].shape == (4,) and res['colour'][0] in learn.dls.tasks[1].vocab

@pytest.mark.parametrize('arch', ['resnet18', 'convnext_atto'])
def test_timm_backbone_by_name(synth, arch):
    learn = _learner(_dls(*synth), arch)
    assert isinstance(learn.model.body, TimmBody)
    _fits_and_predicts(learn, synth)

def test_custom_body_with_cut(synth):
    net = nn.Sequential(ConvLayer(3, 16, stride=2), ConvLayer(16, 32, stride=2), ConvLayer(32, 64, stride=2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    learn = _learner(_dls(*synth), net, cut=-3)
    assert len(learn.model.body) == 3 and len(learn.splitter(learn.model)) == 2   # body, heads
    _fits_and_predicts(learn, synth)

class PadConv(nn.Conv2d):
    "A convolution holding its padding as a sub-module, like EfficientNet's `Conv2dStaticSamePadding`"
    def __init__(self, ni, nf, stride=2):
        super().__init__(ni, nf, 3, stride=stride)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1) if stride == 2 else (1, 1, 1, 1))
    def forward(self, x): return super().forward(self.pad(x))

def test_body_with_padding_modules(synth):
    "fastai's `in_channels` finds no conv in such a body; padded maps are not taken for skip connections"
    body = nn.Sequential(PadConv(3, 16), nn.BatchNorm2d(16), nn.ReLU(), PadConv(16, 32), nn.BatchNorm2d(32), nn.ReLU(),
                         PadConv(32, 64), nn.BatchNorm2d(64), nn.ReLU())
    learn = _learner(_dls(*synth), body)
    feats = learn.model.heads.features
    assert feats.sizes == [(16, 16), (8, 8)] and not any('pad' in n for n in feats.names), feats
    _fits_and_predicts(learn, synth)

@pytest.fixture(scope='module')
def grey(tmp_path_factory, synth):
    "The synthetic shapes saved as single-channel images"
    path, df = synth
    out = tmp_path_factory.mktemp('grey')
    (out/'images').mkdir(); (out/'masks').mkdir()
    for f in df.fn: Image.open(path/f).convert('L').save(out/f)
    for f in df['mask'].dropna(): Image.open(path/f).save(out/f)
    return out, df

def test_grayscale_from_df(grey):
    dls = _dls(*grey, img_cls=PILImageBW)
    assert dls.one_batch()[0].shape[1] == 1

def test_grayscale_n_in_1(grey):
    "n_in=1 with single-channel images, through the plain `mtl_datablock` route"
    path, df = grey
    splits = (list(np.where(~df.is_valid)[0]), list(np.where(df.is_valid)[0]))
    db = mtl_datablock(_tasks(), path, 'fn', splitter=lambda _: splits, img_cls=PILImageBW)
    dls = MTLDataLoaders(*db.dataloaders(df, bs=8, num_workers=0).loaders, path=path).setup_tasks()
    assert dls.one_batch()[0].shape[1] == 1
    learn = _learner(dls, n_in=1)
    assert in_channels(learn.model.body) == 1
    _fits_and_predicts(learn, (path, df))

# ---------------------------------------------------------------------------------------------------------------
# Pretrained weights without internet
# `no_network`: tests/conftest.py

def test_pretrained_without_network(synth, no_network, tmp_path):
    dls = _dls(*synth)
    with pytest.raises(PretrainedWeightsError, match="weights='path/to/weights.pth'") as e:
        mtl_learner(dls, resnet18, pretrained=True)
    assert 'no network' in str(e.value) and 'pretrained=False' in str(e.value)
    tv = resnet18(); torch.manual_seed(0); nn.init.normal_(tv.conv1.weight)
    fn = tmp_path/'resnet18.pth'; torch.save(tv.state_dict(), fn)
    n_norm = len([t for t in dls.after_batch.fs if isinstance(t, Normalize)])
    learn = mtl_learner(dls, resnet18, weights=fn, decoder='light')
    assert torch.equal(learn.model.body[0].weight, tv.conv1.weight)
    assert torch.equal(learn.model.body[7][1].bn2.running_var, tv.layer4[1].bn2.running_var)
    assert not learn.model.body[0].weight.requires_grad                # pretrained: frozen like vision_learner
    norms = [t for t in dls.after_batch.fs if isinstance(t, Normalize)]
    assert len(norms) == n_norm + 1 and torch.allclose(norms[-1].mean.flatten().cpu(), torch.tensor(imagenet_stats[0]))
    _fits_and_predicts(learn, synth)

# ---------------------------------------------------------------------------------------------------------------
# Chance level: the best constant prediction, scored with the learner's metrics
def test_baseline_by_hand(trained, synth):
    path, df = synth
    base = trained.baseline()
    assert set(base) == {'mask_miou', 'mask_dice', 'colour_acc', 'box_iou'}
    va = df[df.is_valid]
    lab = va.colour.dropna()
    test_close = lambda a, b: abs(a - b) < 1e-5
    assert test_close(base['colour_acc'], (lab == lab.mode()[0]).mean())       # the majority of the validation labels
    masks = [np.array(Image.open(path/f)) for f in va['mask'].dropna()]
    px = np.concatenate([m.ravel() for m in masks])
    top = np.bincount(px[px != IGNORE_INDEX]).argmax()
    cm = sum(_confusion(torch.full(m.shape, int(top)), torch.tensor(m.astype(np.int64)), len(SHAPE_CODES)) for m in masks)
    assert test_close(base['mask_miou'], _miou_dice(cm)[0])
    # the mean box, in the batch's scaled coordinates, against every box
    ys = torch.cat([b[3] for b in trained.dls.valid]).view(-1, 4)
    ys = ys[~ys.isnan().any(1)]
    assert test_close(base['box_iou'], box_iou(ys.mean(0, keepdim=True), ys)[0].mean().item())
