"Samplers for one learner (`UseSampler`) and rounds of task batches (`TaskRounds`): order of tasks, one step per round with its gradient and memory, schedules, validation, fine_tune, the DataLoaders' own sampler, resuming, weighting; the names of 0.1."
import pytest, torch
from torch import nn
from fastai.vision.all import Callback, CancelFitException, ConvLayer, TrainEvalCallback, combined_cos, set_seed, L
from fastcore.test import test_eq as assert_eq, test_close as assert_close  # (renamed: pytest collects test_*)
from fastai_mtl.synth import synth_shapes, SHAPE_CODES
from fastai_mtl.tasks import SegmentationTask, ClassificationTask, BoxTask
from fastai_mtl.samplers import BalancedSampler, TaskBatchSampler, TaskEpochSampler, ShuffleSampler
from fastai_mtl.data import MTLDataLoaders
from fastai_mtl.learner import mtl_learner
from fastai_mtl.alternation import *
from copy import deepcopy
from conftest import conv_body
from graph_memory import GraphMemory

BS = 8
MODES = ['epoch', 'task', 'rounds', 'balanced', 'random']   # 'rounds': task batches and `TaskRounds`

pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py

@pytest.fixture(scope='module')
def dls():
    path, df = synth_shapes(64, size=32, seed=0, missing={'mask': 0.5, 'colour': 0.25, 'box': 0.5})
    tasks = [SegmentationTask('mask', SHAPE_CODES), ClassificationTask('colour'), BoxTask()]
    return MTLDataLoaders.from_df(df, path, 'fn', tasks, valid_col='is_valid', bs=BS, num_workers=0)

def body(): return conv_body(classifier=True)

def learner(dls, sampler, cbs=None, seed=0, rounds=False, **kwargs):
    "`sampler` is `mtl_learner`'s (None: the DataLoaders' own), or 'rounds': task batches, one step per round"
    set_seed(seed)
    if sampler == 'rounds': sampler, rounds = 'task', True
    cbs = L(cbs) + ([TaskRounds()] if rounds else [])
    return mtl_learner(dls, body(), pretrained=False, cut=-3, decoder='light', sampler=sampler, cbs=cbs, **kwargs)

def fit(learn, *args, method='fit', **kwargs):
    with learn.no_bar(), learn.no_logging(): getattr(learn, method)(*args, **kwargs)
    return learn

class Batches(Callback):
    "Each training batch: (fit, epoch, task drawn for, tasks x samples bool of which samples carry which target)"
    order, run_valid = UseSampler.order + 1, False
    def __init__(self): self.rows, self.n_fit = [], -1
    def before_fit(self): self.n_fit += 1
    def before_batch(self):
        lab = torch.stack([torch.as_tensor(t.has_target(y)).as_subclass(torch.Tensor).cpu() for t,y in zip(self.learn.tasks, self.yb)])
        us = getattr(self.learn, 'use_sampler', None)
        self.rows.append((self.n_fit, self.epoch, None if us is None else us.task, lab))

class CountSteps(Callback):
    "Count the calls of `opt.step` (and the lr each used) over the learner's life"
    def __init__(self): self.n, self.lrs = 0, []
    def before_fit(self):
        opt = self.learn.opt
        if getattr(opt.step, 'counting', False): return
        orig = opt.step
        def step(*args, **kwargs):
            self.n += 1; self.lrs.append(opt.hypers[-1]['lr'])
            return orig(*args, **kwargs)
        step.counting = True
        opt.step = step

class ValidBatches(Callback):
    "The targets of every validation batch"
    run_train = False
    def __init__(self): self.epochs = []
    def before_validate(self): self.epochs.append([])
    def before_batch(self): self.epochs[-1].append(tuple(y.clone() for y in self.yb))

# --- choosing a mode ---------------------------------------------------------------------------------------
def test_by_name_and_errors(dls):
    learn = learner(dls, 'rounds')
    assert type(learn.use_sampler.sampler) is TaskBatchSampler and isinstance(learn.task_rounds, TaskRounds)
    assert repr(UseSampler(TaskBatchSampler(epoch_len='min'), seed=3)) == "UseSampler(TaskBatchSampler(tasks=None, epoch_len='min'), seed=3)"
    with pytest.raises(ValueError, match="unknown sampler 'round_robin'"): UseSampler('round_robin')
    with pytest.raises(TypeError, match='TaskRounds needs task batches'): fit(learner(dls, None, rounds=True), 1)

@pytest.mark.parametrize('old,sampler,rounds', [('epoch', TaskEpochSampler, False), ('batch', TaskBatchSampler, False),
                                                ('sum', TaskBatchSampler, True), ('mixed', BalancedSampler, False)])
def test_old_alternation_names(dls, old, sampler, rounds):
    "The alternations of fastai_mtl 0.1: one release more, with a warning naming the new way"
    with pytest.warns(FutureWarning, match=f"alternation '{old}' is deprecated.*sampler="):
        learn = learner(dls, None, alternation=old)
    assert type(learn.use_sampler.sampler) is sampler and hasattr(learn, 'task_rounds') == rounds
    with pytest.warns(FutureWarning): cb = TaskAlternation(old, seed=1)
    assert type(cb.sampler) is sampler and cb.seed == 1
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match='unknown alternation'): TaskAlternation('round_robin')

# --- what each mode draws ----------------------------------------------------------------------------------
def test_epoch_mode_one_task_per_epoch(dls):
    class Pct(Callback):
        order = TrainEvalCallback.order + 1
        def before_fit(self): self.pcts = []
        def after_train(self): self.pcts.append(self.pct_train)
    learn = fit(learner(dls, 'epoch', cbs=[Batches(), Pct(), CountSteps()]), 4, 1e-3, method='fit_one_cycle')
    rows, n_lab = learn.batches.rows, dls.train.target_matrix.sum(1)
    for e,t in enumerate([0, 1, 2, 0]):  # the fourth epoch starts the cycle again
        mine = [r for r in rows if r[1] == e]
        assert_eq(len(mine), n_lab[t]//BS)  # the epoch's length is that task's
        assert all(r[2] == t and r[3][t].all() for r in mine)
    assert_close(learn.pct.pcts, [.25, .5, .75, 1.])  # every epoch covers its share of the schedule
    assert_eq(learn.use_sampler.batch_tasks, [r[2] for r in rows])
    assert_eq(learn.count_steps.n, len(rows))

def test_task_batches_round_robin(dls):
    learn = fit(learner(dls, TaskBatchSampler(epoch_len=2), cbs=[Batches(), CountSteps()]), 2)
    rows = learn.batches.rows
    assert_eq([r[2] for r in rows], [0, 1, 2]*4)
    assert all(r[3][r[2]].all() for r in rows)  # task-homogeneous
    assert_eq(learn.count_steps.n, 12)
    learn = fit(learner(dls, 'task', cbs=Batches()), 1)  # default: enough rounds for the largest task
    assert_eq(len(learn.batches.rows), 3*max(dls.train.target_matrix.sum(1)//BS))

def test_mixed_batches(dls):
    learn = fit(learner(dls, 'random', cbs=[Batches(), CountSteps()]), 1)
    assert_eq(len(learn.batches.rows), len(dls.train.items)//BS)   # purely random: fastai's epoch
    assert all(t is None for t in learn.use_sampler.batch_tasks)
    assert_eq(learn.count_steps.n, len(dls.train.items)//BS)
    learn = fit(learner(dls, BalancedSampler(0.6), cbs=Batches()), 1)
    labs = torch.stack([r[3] for r in learn.batches.rows])  # batches x tasks x samples
    q = BalancedSampler(0.6).quotas(dls.train)   # mask and box (half labelled) are rare at 0.6, colour (3/4) is not
    assert q == [2, 0, 2]                        # 5 slots asked for each, scaled down to half of the batch
    for t in range(3): assert (labs[:, t].sum(1) >= q[t]).all()
    learn = fit(learner(dls, None, cbs=Batches()), 1)   # the DataLoaders' own: balanced batches, nothing rare here
    assert_eq(len(learn.batches.rows), -(-len(dls.train.items)//BS))

# --- rounds: one step per round, its gradient and its memory ------------------------------------------------
def test_rounds_one_step_per_round_and_schedule(dls):
    lr = 1e-3
    learn = fit(learner(dls, 'rounds', cbs=[Batches(), CountSteps()]), 2, lr, method='fit_one_cycle')
    rows = learn.batches.rows
    n = len(rows); per_epoch = n//2
    assert_eq([r[2] for r in rows], [0, 1, 2]*(n//3))
    assert all(r[3][r[2]].all() for r in rows)
    assert_eq(learn.count_steps.n, n//3)
    h = learn.use_sampler.history()
    assert_eq(h.step.tolist(), [i%3 == 2 for i in h.batch])
    assert_eq(learn.use_sampler.n_steps, n//3)
    # each step uses the one-cycle schedule at the position of the round's last batch
    sched = combined_cos(0.25, lr/25, lr, lr/1e5)
    ends = [(e*per_epoch + i)/(2*per_epoch) for e,i in zip(h.epoch, h.batch) if i%3 == 2]
    assert_close(learn.count_steps.lrs, [sched(p) for p in ends])
    lrs = learn.count_steps.lrs
    assert lrs[0] < lrs[1] and max(lrs) > 0.9*lr and lrs[-1] < 0.1*lr  # the cycle up and down, sampled once per round

class EvalDoubleCapture(Callback):
    "Eval mode and float64; keep the batches and the gradients just before the first optimiser step, then stop"
    order = TaskRounds.order + 1
    def before_fit(self): self.start, self.batches = deepcopy(self.model), []
    def before_train(self): self.model.eval()
    def before_batch(self):
        self.learn.xb = (self.xb[0].double(),)
        self.learn.yb = tuple(y.double() if y.is_floating_point() else y for y in self.yb)
        self.batches.append((self.xb, self.yb))
    def before_step(self):
        self.grads = [p.grad.clone() for p in self.model.parameters()]
        raise CancelFitException()

def test_rounds_gradient_is_summed_loss_gradient(dls):
    # Eval mode: BatchNorm then uses its running statistics (and dropout is off), so every sample's output depends on
    # that sample alone and one forward pass over the three batches equals three separate ones. In training mode,
    # BatchNorm normalises with each batch's statistics and the two computations are different functions.
    learn = learner(dls, 'rounds', cbs=EvalDoubleCapture())
    learn.model.double()
    fit(learn, 1)
    cap = learn.eval_double_capture
    assert_eq(len(cap.batches), 3)
    model = cap.start.eval()
    preds = model(torch.cat([xb[0] for xb,_ in cap.batches]))
    loss, i = 0, 0
    for xb,yb in cap.batches:
        n = len(xb[0])
        loss = loss + learn.loss_func(tuple(p[i:i+n] for p in preds), *yb); i += n
    loss.backward()
    assert any(g.abs().sum() > 0 for g in cap.grads)
    for g,p in zip(cap.grads, model.parameters()): assert_close(g, p.grad, eps=1e-10)
    # the last batch's gradient alone is another one: the round's gradients were not cleared between its batches
    model.zero_grad()
    xb, yb = cap.batches[-1]
    learn.loss_func(model(xb[0]), *yb).backward()
    assert not all(torch.allclose(g, p.grad) for g,p in zip(cap.grads, model.parameters()))

def test_rounds_keep_one_graph(dls):
    class LiveBeforeForward(Callback):
        run_valid = False
        def before_batch(self): self.live.append(gm.live)
    learn = learner(dls, TaskBatchSampler(epoch_len=2), cbs=LiveBeforeForward(), rounds=True)
    learn.live_before_forward.live = []
    with GraphMemory(exclude=learn.model.parameters()) as gm: fit(learn, 1)
    assert_eq(learn.live_before_forward.live, [0]*6)  # nothing held from the previous batch when the next forward starts
    assert_eq(gm.live, 0)
    # against one batch's graph, and the naive round: three forward passes, one backward pass of the summed loss
    learn.model.train()
    tdl = dls.train.new(sampler=TaskBatchSampler())
    it = iter(tdl); batches = [next(it) for _ in range(3)]
    params = list(learn.model.parameters())
    singles = []
    for b in batches:
        with GraphMemory(exclude=params) as one: learn.loss_func(learn.model(b[0]), *b[1:]).backward()
        singles.append(one.peak)
    with GraphMemory(exclude=params) as naive: sum(learn.loss_func(learn.model(b[0]), *b[1:]) for b in batches).backward()
    assert gm.peak <= 1.05*max(singles), (gm.peak, singles)
    assert naive.peak >= 2.5*max(singles), (naive.peak, singles)

# --- validation, fine_tune, the DataLoader's own sampler ---------------------------------------------------
def _valid_targets(dls):
    return [tuple(y.clone() for y in b[1:]) for b in dls.valid]

@pytest.mark.parametrize('mode', MODES)
def test_fine_tune_and_validation(dls, mode):
    orig = dls.train.sampler
    smp = TaskBatchSampler(epoch_len=1) if mode in ('task', 'rounds') else mode
    learn = learner(dls, smp, rounds=mode == 'rounds', cbs=[Batches(), CountSteps(), ValidBatches()])
    fit(learn, 1, method='fine_tune', freeze_epochs=1)
    assert dls.train.sampler is orig and dls.valid.sampler is None
    rows = learn.batches.rows
    assert_eq(sorted(set(r[0] for r in rows)), [0, 1])  # both fits trained
    n_train = len(rows)
    assert_eq(learn.count_steps.n, n_train//3 if mode == 'rounds' else n_train)
    # every validation covers the whole validation set, in order, with every task
    expected = _valid_targets(dls)
    assert_eq(len(learn.valid_batches.epochs), 2)
    for got in learn.valid_batches.epochs:
        assert_eq(len(got), len(expected))
        for g,e in zip(got, expected):
            for a,b in zip(g, e): assert torch.equal(a.nan_to_num(-7.), b.nan_to_num(-7.))
    vals = learn.recorder.values[-1]
    assert all(torch.isfinite(torch.tensor(float(v))) for v in vals)

def test_interrupted_fit_leaves_the_dataloaders_alone(dls):
    class Boom(Callback):
        def after_batch(self):
            if self.training and self.iter == 1: raise RuntimeError('boom')
    orig = dls.train.sampler
    learn = learner(dls, 'task', cbs=Boom())
    with pytest.raises(RuntimeError, match='boom'): fit(learn, 1)
    assert dls.train.sampler is orig                     # nothing to restore: `UseSampler` never replaced it
    class Count(Callback):
        def before_fit(self): self.n = 0
        def before_batch(self): self.n += self.training
    plain = fit(learner(dls, None, cbs=Count()), 1)      # a plain fit afterwards: the DataLoaders' own (balanced) epoch
    assert plain.count.n == orig.n_batches(dls.train)
    learn.remove_cb(Boom)
    fit(learn, 1)
    learn.validate(); learn.get_preds()                  # never train: leave the record alone
    assert dls.train.sampler is orig and len(learn.use_sampler.batch_tasks) > 0

def test_needs_a_shuffling_mtl_dataloader(dls):
    learn = learner(dls, 'task')
    dls.train.shuffle = False
    try:
        with pytest.raises(ValueError, match='shuffling'): fit(learn, 1)
    finally: dls.train.shuffle = True

# --- resuming ----------------------------------------------------------------------------------------------
class StopAfter(Callback):
    def __init__(self, epoch): self.last = epoch
    def after_epoch(self):
        if self.epoch == self.last: raise CancelFitException()

@pytest.mark.parametrize('mode', MODES)
def test_resume_equals_uninterrupted(dls, mode, tmp_path):
    smp = lambda: TaskBatchSampler(epoch_len=1) if mode in ('task', 'rounds') else mode
    mk = lambda cbs=None, seed=0: learner(dls, None, cbs=L(cbs) + [UseSampler(smp(), seed=42)], seed=seed, rounds=mode == 'rounds')
    whole = fit(mk(Batches()), 4, 1e-2, method='fit_one_cycle')
    first = fit(mk(), 4, 1e-2, method='fit_one_cycle', cbs=StopAfter(2))
    first.save(tmp_path/'ckpt')
    rest = mk(Batches(), seed=1).load(tmp_path/'ckpt')
    fit(rest, 4, 1e-2, method='fit_one_cycle', start_epoch=3)
    assert_eq([r[2] for r in rest.batches.rows], [r[2] for r in whole.batches.rows if r[1] == 3])
    for (k,a),b in zip(whole.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(a, b), k
    for a,b in zip(whole.opt.state_dict()['state'], rest.opt.state_dict()['state']):
        for k in a: assert_eq(a[k], b[k])

def test_resume_position_without_seed(dls, tmp_path):
    first = fit(learner(dls, 'epoch'), 4, 1e-3, cbs=StopAfter(2))
    assert_eq(first.use_sampler.batch_tasks.unique(), [0, 1, 2])
    first.save(tmp_path/'ckpt')
    rest = fit(learner(dls, 'epoch').load(tmp_path/'ckpt'), 5, 1e-3, start_epoch=3)
    h = rest.use_sampler.history()
    assert_eq(h.groupby('epoch').task.first().tolist(), ['mask', 'colour'])  # epochs 3 and 4

# --- with loss weighting -----------------------------------------------------------------------------------
def test_rounds_per_batch_losses_for_weighting(dls):
    class LastCounts(Callback):
        def before_fit(self): self.seen = []
        def after_loss(self):
            if self.training: self.seen.append((self.loss_func.last_losses.clone(), self.loss_func.last_counts.clone()))
    learn = fit(learner(dls, TaskBatchSampler(epoch_len=2), cbs=LastCounts(), rounds=True), 1)
    bt = learn.use_sampler.batch_tasks
    assert_eq(len(learn.last_counts.seen), len(bt))
    for (losses,counts),t in zip(learn.last_counts.seen, bt):
        assert counts[t] == (BS*32*32 if t == 0 else BS) and torch.isfinite(losses).all()

@pytest.mark.parametrize('weighting', ['dwa', 'uncertainty'])
def test_rounds_with_weighting(dls, weighting):
    learn = learner(dls, TaskBatchSampler(epoch_len=2), cbs=CountSteps(), rounds=True, weighting=weighting)
    fit(learn, 3, 1e-3)
    assert_eq(learn.count_steps.n, 3*2)
    assert all(torch.isfinite(torch.tensor(float(v))) for v in learn.recorder.values[-1])

def test_history_after_the_callback_left(dls):
    "A `UseSampler` given to one `fit` only is removed afterwards; its history still reads the task names"
    cb = UseSampler('task')
    learn = fit(learner(dls, None), 1, cbs=cb)
    assert cb.learn is None or not any(c is cb for c in learn.cbs)
    assert set(cb.history().task) == {'mask', 'colour', 'box'}
