"Samplers as properties over random label patterns: the balanced default's guarantee (every rare task its share of every batch, every sample once per epoch), and each sampler's batch shape."
import math, random
from types import SimpleNamespace
import numpy as np
from hypothesis import given, settings, strategies as st, HealthCheck
from fastai_mtl.core import Task, Tasks
from fastai_mtl.samplers import BalancedSampler, ShuffleSampler, TaskBatchSampler, TaskEpochSampler, samplers

def fake_dl(lab, bs, seed):
    "What a sampler reads from an `MTLDataLoader`: the target matrix (tasks x samples), bs, rng, the tasks"
    return SimpleNamespace(target_matrix=lab, bs=bs, rng=random.Random(seed), drop_last=True,
                           tasks=Tasks([Task(f't{i}') for i in range(len(lab))]))

@st.composite
def label_patterns(draw):
    "A random (tasks x samples) labelled matrix: 1-4 tasks, 1-300 samples, each task labelled with its own probability"
    n_tasks, n = draw(st.integers(1, 4)), draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    probs = [draw(st.sampled_from([0., 0.01, 0.05, 0.15, 0.3, 0.6, 1.])) for _ in range(n_tasks)]
    return rng.random((n_tasks, n)) < np.array(probs)[:, None]

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lab=label_patterns(), bs=st.integers(2, 64), share=st.sampled_from([0.1, 0.25, 0.4, 0.6]),
       max_reserved=st.sampled_from([0.25, 0.5, 0.75]), seed=st.integers(0, 1000))
def test_balanced_guarantee(lab, bs, share, max_reserved, seed):
    dl = fake_dl(lab, bs, seed)
    smp = BalancedSampler(share, max_reserved)
    n_tasks, n = lab.shape
    try: q = smp.quotas(dl)
    except ValueError as e:   # more rare tasks than reservable slots: refused, and says why
        assert 'rare tasks need at least one slot each' in str(e)
        assert sum(1 for i in range(n_tasks) if 0 < lab[i].sum() < share*n) > int(max_reserved*bs)
        return
    counts = lab.sum(1)
    for i in range(n_tasks):
        rare = 0 < counts[i] < share*n
        assert (q[i] > 0) == rare                                   # slots for the rare tasks only...
        if rare: assert q[i] <= min(math.ceil(share*bs), counts[i])  # ...at most what was asked, at most its pool
    assert sum(q) <= int(max_reserved*bs)
    idxs = smp.get_idxs(dl)
    nb = smp.n_batches(dl)
    assert len(idxs) == nb*bs and nb == max(1, math.ceil(n/(bs - sum(q))))
    assert set(idxs) == set(range(n))                            # every sample at least once: nothing dropped
    for b in range(nb):
        batch = idxs[b*bs:(b+1)*bs]
        for i in range(n_tasks):
            if q[i]: assert lab[i, batch].sum() >= q[i]            # the guarantee, in every batch
    if sum(q) == 0: assert nb == math.ceil(n/bs)

@settings(max_examples=100, deadline=None)
@given(lab=label_patterns(), bs=st.integers(1, 32), seed=st.integers(0, 1000))
def test_task_batches_are_homogeneous_and_full(lab, bs, seed):
    dl = fake_dl(lab, bs, seed)
    if not lab.any(1).any(): return
    smp = TaskBatchSampler()
    idxs = smp.get_idxs(dl)
    assert len(idxs) == smp.n_batches(dl)*bs == len(smp.batch_tasks)*bs
    for b,t in enumerate(smp.batch_tasks): assert lab[t, idxs[b*bs:(b+1)*bs]].all()

def test_balanced_against_random_on_the_seed_question():
    "3,000 masks among 33,000 images, bs 64: half of every batch has a mask; the epoch grows, no image is dropped"
    lab = np.ones((2, 33000), bool); lab[0, 3000:] = False
    dl = fake_dl(lab, 64, 0)
    smp = BalancedSampler()
    assert smp.quotas(dl) == [32, 0] and smp.n_batches(dl) == 1032 and ShuffleSampler().n_batches(dl) == 515
    idxs = np.array(smp.get_idxs(dl)).reshape(-1, 64)
    masks = lab[0, idxs].sum(1)
    assert masks.min() >= 32 and abs(masks.mean() - (32 + 32*3000/33000)) < 1
    assert len(np.unique(idxs)) == 33000

def test_balanced_quotas_scaled_within_the_cap():
    "Three rare tasks asking 5, 1 and 1 slots with 3 reservable: one slot each, not a refusal (hypothesis found this case)"
    n = 200
    lab = np.zeros((4, n), bool); lab[3] = True
    lab[0, :40] = True; lab[1, :2] = True; lab[2, 2:4] = True            # 20%, 1%, 1% of the samples: all rare at share 0.25
    q = BalancedSampler(0.25, 0.25).quotas(fake_dl(lab, 12, 0))           # asked: ceil(0.25*12)=3 (capped by pools: 3, 2, 2)
    assert q[:3] == [1, 1, 1] and q[3] == 0 and sum(q) <= 3
    q = BalancedSampler(0.25, 0.5).quotas(fake_dl(lab, 20, 0))            # asked 5, 2, 2 with 10 reservable: all fit
    assert q == [5, 2, 2, 0]

def test_one_vocabulary():
    "One registry of samplers; the old name 'mixed' (random batches as a sampler, balanced ones as an alternation) is a deprecated alias"
    assert samplers.keys() == ['random', 'task', 'epoch', 'balanced', 'rows']
    import warnings
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        assert samplers.resolve('mixed') is ShuffleSampler
    assert any('deprecated' in str(o.message) and "'random'" in str(o.message) for o in w)

def test_epoch_sampler_follows_the_epoch_it_is_told():
    lab = np.zeros((3, 30), bool); lab[0, :10] = lab[1, 10:20] = lab[2, 20:] = True
    dl, smp = fake_dl(lab, 4, 0), TaskEpochSampler()
    for e in (5, 0, 4, 4):
        smp.set_epoch(e)
        assert set(smp.get_idxs(dl)) <= set(range(10*(e % 3), 10*(e % 3) + 10))
