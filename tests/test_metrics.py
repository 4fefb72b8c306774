"Per-task metrics: global values over several batches with missing items, `None` without labels, fastai Learner use."
from types import SimpleNamespace
import pytest, torch, torch.nn.functional as F
from torch import nn
from fastai.learner import Learner
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.metrics import JaccardCoeffMulti, DiceMulti
from fastai.callback.progress import ProgressCallback
from fastai.learner import Recorder
from fastai_mtl.core import IGNORE_INDEX, MISSING_LABEL, MISSING_COORD
from fastai_mtl.losses import MaskedCrossEntropy, DIoULoss, has_box
from fastai_mtl.metrics import *

NOBOX = [MISSING_COORD]*4
# each kind's rule for its labelled items (what the tasks' `item_mask` say; a metric has none of its own)
CLS, SEG, BOX = (lambda y: y != MISSING_LABEL), (lambda y: y != IGNORE_INDEX), has_box

def run(metric, batches, device='cpu'):
    "Value of `metric` over `batches` of `(pred, yb[, training, loss_func])` given as the task at position 1"
    metric.reset()
    mv = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t
    for b in batches:
        pred, targ, training, lf = (*b, False, None)[:4] if len(b) == 2 else b
        metric.accumulate(SimpleNamespace(pred=(None, mv(pred)), yb=(None, mv(targ)), training=training, loss_func=lf))
    return metric.value

def logits(codes, n): return F.one_hot(torch.tensor(codes), n).float().movedim(-1, 1)

ACC_BATCHES = [(logits([0, 0, 1], 3), torch.tensor([0, 1, MISSING_LABEL])),          # 1/2
               (logits([2, 0, 1, 1], 3), torch.tensor([2, MISSING_LABEL, MISSING_LABEL, MISSING_LABEL])),  # 1/1
               (logits([0, 2], 3), torch.tensor([MISSING_LABEL]*2))]
SEG_BATCHES = [(logits([[[0, 1], [1, 2]]], 3), torch.tensor([[[0, 0], [1, IGNORE_INDEX]]])),
               (logits([[[2, 0], [1, 0]]], 3), torch.tensor([[[2, 2], [1, 0]]])),
               (logits([[[1, 1], [1, 1]]], 3), torch.full((1, 2, 2), IGNORE_INDEX))]
BOX_BATCHES = [(torch.tensor([[-1., -1., 0., 0.], [0., 0., 1., 1.]]), torch.tensor([[[-.5, -.5, .5, .5]], [NOBOX]])),
               (torch.tensor([[0., 0., .5, .5], [-1., -1., -.5, -.5]]), torch.tensor([[[0., 0., .5, .5]], [[.5, .5, 1., 1.]]]))]
def _rec(losses, counts): return SimpleNamespace(last_losses=torch.tensor(losses), last_counts=torch.tensor(counts))
LOSS_BATCHES = [(None, None, False, _rec([.5, 1.], [0, 2])), (None, None, True, _rec([9., 9.], [5, 5])),
                (None, None, False, _rec([0., 4.], [0, 1]))]

def test_accuracy_global_not_batch_mean():
    assert run(TaskAccuracy(1, CLS), ACC_BATCHES) == pytest.approx(2/3)   # mean of batch means would be .75
    assert run(TaskAccuracy(1, CLS), ACC_BATCHES[2:]) is None

def test_seg_by_hand():
    "pairs (targ, pred): (0,0)x2 (0,1) (1,1)x2 (2,2) (2,0); IoU 2/4, 2/3, 1/2; Dice 4/6, 4/5, 2/3"
    assert run(TaskMeanIoU(1, SEG, 3), SEG_BATCHES) == pytest.approx((1/2 + 2/3 + 1/2)/3)
    assert run(TaskDice(1, SEG, 3), SEG_BATCHES) == pytest.approx((4/6 + 4/5 + 2/3)/3)
    assert run(TaskMeanIoU(1, SEG), SEG_BATCHES) == pytest.approx((1/2 + 2/3 + 1/2)/3)   # n_codes from the prediction
    m = TaskMeanIoU(1, SEG, 3); run(m, SEG_BATCHES[:1])
    # code 2 is only predicted on the ignored pixel: it does not occur, so it has no score
    assert m.per_code[2].isnan() and m.per_code[:2].tolist() == pytest.approx([1/2, 1/2]) and m.value == pytest.approx(1/2)
    assert run(TaskMeanIoU(1, SEG, 3), SEG_BATCHES[2:]) is None and run(TaskDice(1, SEG, 3), SEG_BATCHES[2:]) is None

def test_seg_absent_code_left_out():
    four = [(torch.cat([p, torch.full_like(p[:, :1], -1.)], 1), y) for p, y in SEG_BATCHES]
    m = TaskMeanIoU(1, SEG, 4)
    assert run(m, four) == pytest.approx((1/2 + 2/3 + 1/2)/3) and m.per_code[3].isnan()

def test_seg_wrong_codes():
    with pytest.raises(ValueError, match='codes'): run(TaskMeanIoU(1, SEG, 4), SEG_BATCHES)
    with pytest.raises(ValueError, match=r'mask codes must be in \[0, 3\)'):
        run(TaskDice(1, SEG, 3), [(logits([[[0, 1]]], 3), torch.tensor([[[0, 5]]]))])

def _fastai(metric, batches):
    metric.reset()
    for p, y in batches: metric.accumulate(SimpleNamespace(pred=p, y=y))
    return metric.value

def test_seg_matches_fastai_without_ignored_pixels():
    torch.manual_seed(0)
    bs = [(torch.randn(2, 5, 6, 6), torch.randint(0, 4, (2, 6, 6))) for _ in range(3)]   # code 4 rarely predicted, never a target
    assert run(TaskMeanIoU(1, SEG), bs) == pytest.approx(_fastai(JaccardCoeffMulti(), bs))
    assert run(TaskDice(1, SEG), bs) == pytest.approx(_fastai(DiceMulti(), bs))

def test_box_iou_global():
    assert run(TaskBoxIoU(1, BOX), BOX_BATCHES) == pytest.approx((1/7 + 1 + 0)/3)   # batch means: (1/7 + 1/2)/2
    assert run(TaskBoxIoU(1, BOX), [(torch.zeros(1, 4), torch.tensor([[NOBOX]]))]) is None

def test_task_loss_validation_only_and_exact():
    assert run(TaskLoss(1), LOSS_BATCHES) == pytest.approx(2.)   # (1*2 + 4*1)/3; batch means give 2.5
    assert run(TaskLoss(0), LOSS_BATCHES) is None
    with pytest.raises(AttributeError, match='last_losses'): run(TaskLoss(1), [(None, None, False, object())])

def test_names_and_reset():
    assert TaskAccuracy(0, CLS).name == 'task0_acc' and TaskMeanIoU(2, SEG, 3, 'seg').name == 'seg_miou'
    assert TaskDice(1, SEG, 3, task='seg').name == 'seg_dice' and TaskBoxIoU(3, BOX, 'pet').name == 'pet_iou'
    assert TaskLoss(1, 'breed').name == 'breed_loss' and TaskLoss(1, 'breed', name='bl').name == 'bl'
    m = TaskAccuracy(1, CLS)
    run(m, ACC_BATCHES); m.reset()
    assert m.value is None

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda():
    assert run(TaskAccuracy(1, CLS), ACC_BATCHES, 'cuda') == pytest.approx(2/3)
    assert run(TaskMeanIoU(1, SEG, 3), SEG_BATCHES, 'cuda') == pytest.approx((1/2 + 2/3 + 1/2)/3)
    assert run(TaskDice(1, SEG, 3), SEG_BATCHES, 'cuda') == pytest.approx((4/6 + 4/5 + 2/3)/3)
    assert run(TaskBoxIoU(1, BOX), BOX_BATCHES, 'cuda') == pytest.approx((1/7 + 1 + 0)/3)

# --- in a real fastai Learner ---------------------------------------------------------------------------------

class ToyModel(nn.Module):
    def __init__(self): super().__init__(); self.cls, self.box = nn.Linear(8, 3), nn.Linear(8, 4)
    def forward(self, x): return self.cls(x), self.box(x).tanh()

class ToyMultiLoss:
    "Stand-in for `MaskedMultiLoss`: sums the task losses and records `last_losses`/`last_counts`"
    def __init__(self): self.losses, self.rules = [MaskedCrossEntropy(), DIoULoss()], [CLS, BOX]
    def __call__(self, preds, *targs):
        res = [lf(p, t, r(t)) for lf, r, p, t in zip(self.losses, self.rules, preds, targs)]
        self.last_losses = torch.stack([l.detach() for l, _ in res])
        self.last_counts = torch.stack([n for _, n in res])
        return sum(l for l, _ in res)

def _dl(n, boxes, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 8, generator=g), torch.randint(-1, 3, (n,), generator=g)
    b = torch.rand(n, 1, 4, generator=g).sort(-1).values*2 - 1
    if not boxes: b[:] = MISSING_COORD
    return DataLoader(list(zip(x, y, b)), bs=8)

@pytest.mark.parametrize('train_metrics', [False, True])
def test_in_learner(train_metrics):
    dls = DataLoaders(_dl(24, True, 0), _dl(20, False, 1)); dls.n_inp = 1
    mets = [TaskAccuracy(0, CLS, 'breed'), TaskLoss(0, 'breed'), TaskBoxIoU(1, BOX, 'pet'), TaskLoss(1, 'pet')]
    learn = Learner(dls, ToyModel(), loss_func=ToyMultiLoss(), metrics=mets, cbs=Recorder(train_metrics=train_metrics))
    learn.fit(1, 1e-2)   # with the progress bar (ProgressCallback is a default callback): prints None, no crash
    rec = learn.recorder
    vals = dict(zip(rec.metric_names[1:-1], rec.values[-1]))
    assert vals['valid_pet_iou' if train_metrics else 'pet_iou'] is None
    assert vals['valid_pet_loss' if train_metrics else 'pet_loss'] is None
    if train_metrics:
        assert vals['train_breed_loss'] is None and vals['train_pet_loss'] is None   # TaskLoss: validation only
        assert isinstance(vals['train_pet_iou'], float)
    x, y, _ = map(torch.cat, zip(*dls.valid))
    with torch.no_grad(): ref = F.cross_entropy(learn.model(x)[0], y, ignore_index=MISSING_LABEL).item()
    assert vals['valid_breed_loss' if train_metrics else 'breed_loss'] == pytest.approx(ref, rel=1e-5)
    res = learn.validate()
    assert res[-2:] == [None, None] and res[2] == pytest.approx(ref, rel=1e-5)
