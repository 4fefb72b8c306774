"Masked per-task losses: hand-computed values, missing items, the all-missing batch, gradients, pickling."
import math, pickle
import pytest, torch, torch.nn.functional as F
from fastai.torch_core import TensorBase, TensorCategory
from fastai.vision.core import TensorMask, TensorBBox
from fastai_mtl.core import IGNORE_INDEX, MISSING_LABEL, MISSING_COORD
from fastai_mtl.losses import *

L2, L4 = math.log(2), math.log(4)

def M(targ):
    "Which items of `targ` are labelled, by the sentinels (what each task's `item_mask` says; a loss has no rule of its own)"
    if targ.is_floating_point(): return ~targ.isnan().any(-1) if targ.dim() > 1 else ~targ.isnan()
    return (targ != MISSING_LABEL) & (targ != IGNORE_INDEX)
BOX_LOSSES = [DIoULoss(), GIoULoss(), L1BoxLoss()]
ALL_LOSSES = [MaskedCrossEntropy(label_smoothing=.1, weight=[1., 2., 3.]), MaskedDiceLoss(), SegmentationLoss(dice=1.), *BOX_LOSSES]

def _tm(targ): return targ, M(targ)

def test_a_loss_takes_the_task_rule():
    "No rule of its own: the labelled items are the task's to say"
    with pytest.raises(TypeError, match='item_mask'): MaskedCrossEntropy()(torch.randn(2, 3), torch.tensor([0, 1]))
    lg, t = torch.randn(3, 3), torch.tensor([0, 1, 2])
    only_first = MaskedCrossEntropy()(lg, t, torch.tensor([True, False, False]))
    torch.testing.assert_close(only_first[0], F.cross_entropy(lg[:1], t[:1])); assert only_first[1] == 1

def quarter_half(shape):
    "Logits whose softmax over 3 classes (dim 1) is [1/4, 1/4, 1/2] everywhere"
    lg = torch.zeros(shape); lg[:, 2] = L2
    return lg

def test_ce_by_hand():
    lg = quarter_half((2, 3))
    loss, n = MaskedCrossEntropy()(lg, torch.tensor([2, 0]), M(torch.tensor([2, 0])))
    assert loss.item() == pytest.approx((L2 + L4)/2) and n.item() == 2 and n.dtype == torch.int64 and n.ndim == 0
    loss, n = MaskedCrossEntropy()(lg, torch.tensor([MISSING_LABEL, 0]), M(torch.tensor([MISSING_LABEL, 0])))
    assert loss.item() == pytest.approx(L4) and n.item() == 1

def test_ce_mask_by_hand():
    loss, n = MaskedCrossEntropy()(quarter_half((1, 3, 2, 2)), *_tm(torch.tensor([[[2, 0], [1, IGNORE_INDEX]]])))
    assert loss.item() == pytest.approx((L2 + 2*L4)/3) and n.item() == 3

@pytest.mark.parametrize('kw', [{}, {'label_smoothing': .1}, {'weight': [.5, 2., 1.5]}, {'label_smoothing': .3, 'weight': [1., 0., 3.]}])
def test_ce_matches_torch_on_labelled(kw):
    torch.manual_seed(1)
    pred, targ = torch.randn(7, 3), torch.tensor([0, -1, 2, 1, -1, 2, 0])
    lab = targ != -1
    tkw = {k: (torch.tensor(v) if k == 'weight' else v) for k, v in kw.items()}
    loss, n = MaskedCrossEntropy(**kw)(pred, targ, lab)
    assert n.item() == 5
    torch.testing.assert_close(loss, F.cross_entropy(pred[lab], targ[lab], **tkw))
    torch.testing.assert_close(loss, F.cross_entropy(pred, targ, ignore_index=-1, **tkw))

def test_ce_fastai_types():
    "fastai's tensor subclasses in, a plain tensor out"
    pred = TensorBase(torch.randn(3, 3)).requires_grad_()
    loss, n = MaskedCrossEntropy()(pred, *_tm(TensorCategory(torch.tensor([0, -1, 2]))))
    assert type(loss) is torch.Tensor
    loss.backward()
    assert (pred.grad[1] == 0).all() and (pred.grad[0] != 0).all()

def test_dice_by_hand():
    dices = [(2*.25 + 1)/(.75 + 2), (2*.25 + 1)/(.75 + 2), (2*.5 + 1)/(1.5 + 2)]
    loss, n = MaskedDiceLoss()(quarter_half((1, 3, 2, 2)), *_tm(torch.tensor([[[2, 0], [1, IGNORE_INDEX]]])))
    assert loss.item() == pytest.approx(1 - sum(dices)/3) and n.item() == 3
    perfect = F.one_hot(torch.tensor([[[2, 0], [1, 1]]]), 3).permute(0, 3, 1, 2).float()*50
    assert MaskedDiceLoss(smooth=0.)(perfect, *_tm(TensorMask(torch.tensor([[[2, 0], [1, IGNORE_INDEX]]]))))[0].item() == pytest.approx(0, abs=1e-6)

def test_seg_loss_combines():
    torch.manual_seed(2)
    pred, masks = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    masks[0, 0] = IGNORE_INDEX
    loss, n = SegmentationLoss(dice=.7, label_smoothing=.1)(pred, masks, M(masks))
    ref = MaskedCrossEntropy(.1)(pred, masks, M(masks))[0] + .7*MaskedDiceLoss()(pred, masks, M(masks))[0]
    torch.testing.assert_close(loss, ref); assert n.item() == 28

def test_box_losses_by_hand():
    p, t = torch.tensor([[-1., -1., 0., 0.]]), TensorBBox(torch.tensor([[[-.5, -.5, .5, .5]]]))
    iou, area_c, union = 1/7, 2.25, 1.75
    assert DIoULoss()(p, t, M(t))[0].item() == pytest.approx(1 - iou + .5/4.5)
    assert GIoULoss()(p, t, M(t))[0].item() == pytest.approx(1 - (iou - (area_c - union)/area_c))
    assert L1BoxLoss()(p, t, M(t))[0].item() == pytest.approx(.5)
    assert DIoULoss()(p[:, [2, 1, 0, 3]], t, M(t))[0].item() == pytest.approx(1 - iou + .5/4.5)   # x corners swapped

def test_box_helpers():
    t = torch.tensor([[[0., 0., 1., 1.]], [[MISSING_COORD]*4], [[0., MISSING_COORD, 1., 1.]]])
    assert has_box(t).tolist() == [True, False, False]
    assert has_box(t[:, 0]).tolist() == [True, False, False]
    with pytest.raises(ValueError, match='one box per sample'): has_box(torch.zeros(2, 3, 4))
    a = torch.tensor([[-1., -1., 0., 0.], [0., 0., 0., 0.]])
    b = torch.tensor([[-.5, -.5, .5, .5], [0., 0., 0., 0.]])
    torch.testing.assert_close(box_iou_pairs(a, b), torch.tensor([1/7, 0.]))

def _mixed(loss_fn, seed=0):
    "pred, targ, labelled mask of a mixed batch for `loss_fn`"
    g = torch.Generator().manual_seed(seed)
    if isinstance(loss_fn, BoxLoss):
        targ = torch.rand(5, 1, 4, generator=g).sort(-1).values*2 - 1
        targ[[1, 3]] = MISSING_COORD
        return torch.rand(5, 4, generator=g)*2 - 1, targ, torch.tensor([True, False, True, False, True])
    if isinstance(loss_fn, MaskedCrossEntropy):
        return torch.randn(5, 3, generator=g), torch.tensor([0, -1, 2, -1, 1]), torch.tensor([True, False, True, False, True])
    masks = torch.randint(0, 3, (5, 4, 4), generator=g)
    masks[[1, 3]] = IGNORE_INDEX
    return torch.randn(5, 3, 4, 4, generator=g), masks, torch.tensor([True, False, True, False, True])

@pytest.mark.parametrize('loss_fn', ALL_LOSSES, ids=repr)
def test_partial_batch_is_labelled_subset(loss_fn):
    pred, targ, lab = _mixed(loss_fn)
    pred.requires_grad_()
    loss, n = loss_fn(pred, targ, M(targ))
    sub, n_sub = loss_fn(pred[lab], targ[lab], M(targ[lab]))
    torch.testing.assert_close(loss, sub); assert n.item() == n_sub.item() > 0
    loss.backward()
    assert (pred.grad[~lab] == 0).all() and (pred.grad[lab] != 0).any()

@pytest.mark.parametrize('loss_fn', ALL_LOSSES, ids=repr)
def test_all_missing_is_exact_zero_with_graph(loss_fn):
    pred, targ, _ = _mixed(loss_fn)
    targ = torch.full_like(targ, MISSING_COORD if targ.is_floating_point() else
                           (MISSING_LABEL if isinstance(loss_fn, MaskedCrossEntropy) else IGNORE_INDEX))
    pred = (pred*1e4).requires_grad_()
    loss, n = loss_fn(pred, targ, M(targ))
    assert loss.item() == 0. and n.item() == 0 and loss.requires_grad
    loss.backward()
    assert (pred.grad == 0).all()

@pytest.mark.parametrize('loss_fn', BOX_LOSSES, ids=repr)
def test_degenerate_boxes_finite(loss_fn):
    pred = torch.tensor([[0., 0., 0., 0.], [.5, .5, .5, .5], [.2, .9, -.3, .1]], requires_grad=True)
    loss, n = loss_fn(pred, *_tm(torch.tensor([[0., 0., 0., 0.], [-1., 0., 1., 0.], [0., 0., 1., 1.]])))
    loss.backward()
    assert loss.isfinite() and pred.grad.isfinite().all() and n.item() == 3

@pytest.mark.parametrize('loss_fn', ALL_LOSSES, ids=repr)
def test_pickle_and_repr(loss_fn):
    lf = pickle.loads(pickle.dumps(loss_fn))
    assert repr(lf) == repr(loss_fn) and repr(lf).startswith(type(loss_fn).__name__ + '(')
    pred, targ, _ = _mixed(loss_fn)
    torch.testing.assert_close(lf(pred, targ, M(targ))[0], loss_fn(pred, targ, M(targ))[0])

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('loss_fn', ALL_LOSSES, ids=repr)
def test_cuda(loss_fn):
    pred, targ, _ = _mixed(loss_fn)
    loss, n = loss_fn(pred.cuda().requires_grad_(), targ.cuda(), M(targ.cuda()))
    assert loss.device.type == 'cuda' and n.device.type == 'cuda'
    torch.testing.assert_close(loss.cpu(), loss_fn(pred, targ, M(targ))[0])
    loss.backward()

# --- predictions of unlabelled items can be anything: the loss and its gradient stay those of the labelled ones ----
EXTREME = [float('inf'), -float('inf'), float('nan'), 1e30, -1e30]

def _cases():
    from fastai_mtl.losses import MaskedCrossEntropy, SegmentationLoss, MaskedDiceLoss, DIoULoss, GIoULoss, L1BoxLoss, \
        MaskedBCEWithLogits, MaskedRegressionLoss
    nan = float('nan')
    torch.manual_seed(0)
    seg_t = torch.randint(0, 3, (3, 4, 4)); seg_t[2] = IGNORE_INDEX; seg_t[0, 0] = IGNORE_INDEX
    box_t = torch.tensor([[[-.5, -.5, .5, .5]], [[-.2, -.1, .3, .6]], [[nan]*4]])
    vals = torch.tensor([[1., 2.], [3., 4.], [nan, nan]])
    return [(MaskedCrossEntropy(), torch.randn(3, 4), torch.tensor([1, 3, MISSING_LABEL])),
            (MaskedCrossEntropy(label_smoothing=.1), torch.randn(3, 3, 4, 4), seg_t),
            (SegmentationLoss(dice=1.), torch.randn(3, 3, 4, 4), seg_t), (MaskedDiceLoss(), torch.randn(3, 3, 4, 4), seg_t),
            (DIoULoss(), torch.rand(3, 4).sort(-1).values*2 - 1, box_t), (GIoULoss(), torch.rand(3, 4)*2 - 1, box_t),
            (L1BoxLoss(), torch.rand(3, 4), box_t), (MaskedBCEWithLogits(), torch.randn(3, 2), torch.tensor([[1., 0.], [0., 0.], [nan, nan]])),
            (MaskedRegressionLoss('mse'), torch.randn(3, 2), vals), (MaskedRegressionLoss('huber'), torch.randn(3, 2), vals)]

@pytest.mark.parametrize('bad', EXTREME)
def test_unlabelled_predictions_cannot_poison_the_loss(bad):
    for lf, pred, targ in _cases():
        ref, n_ref = lf(pred, targ, M(targ))
        p = pred.clone()
        if p.dim() == 4: p[2] = bad; p[0, :, 0, 0] = bad        # the missing mask, and the ignored pixel of the first
        else: p[2] = bad                                          # the unlabelled sample
        p.requires_grad_()
        loss, n = lf(p, targ, M(targ))
        loss.backward()
        assert n == n_ref and torch.isfinite(loss) and torch.allclose(loss, ref, atol=1e-6), (lf, bad, loss, ref)
        assert torch.isfinite(p.grad).all(), (lf, bad)
        assert (p.grad[2] == 0).all(), (lf, bad)
