"DWA under fastai's `distrib_ctx` (DDP): two CPU processes (gloo) must use identical weights, from both shards' losses."
import json, os, subprocess, sys
import numpy as np, pytest, torch
from conftest import ROOT
from fastai_mtl.weighting import dwa_weights

import accelerate  # noqa: F401  (fastai's distrib_ctx needs it; a dev dependency)

def run_ranks(worker:str, tmp_path, n:int) -> tuple:
    "Run `tests/<worker>` in two processes (torch.distributed.run, gloo) on `n` synthetic shapes made beforehand; each rank's JSON"
    from fastai_mtl.synth import synth_shapes
    synth_shapes(n, size=32, seed=0, missing={'mask': 0.5, 'colour': 0.2, 'box': 0.3})   # made once, before both ranks read it
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(ROOT/'tests'/worker), str(tmp_path)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return tuple(json.loads((tmp_path/f'rank{r}.json').read_text()) for r in (0, 1))

@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason='needs gloo')
def test_dwa_reduced_over_ranks(tmp_path):
    r0, r1 = run_ranks('dist_dwa_worker.py', tmp_path, 96)
    assert r0['world_size'] == 2 and {r0['rank'], r1['rank']} == {0, 1}
    W = np.array(r0['weights'])
    assert W.shape == (4, 3) and np.array_equal(W, np.array(r1['weights']))      # identical weights on every rank
    assert (W[:2] == 1).all() and not np.allclose(W[2:], 1)
    # the epoch losses are the means over both shards: sums and counts added up over the ranks
    s = np.array([r['local'] for r in (r0, r1)])                                  # rank, epoch, (sums, counts), task
    sums, counts = s[:, :, 0].sum(0), s[:, :, 1].sum(0)
    np.testing.assert_allclose(np.array(r0['counts']), counts)
    np.testing.assert_allclose(np.array(r0['losses']), sums/counts, rtol=1e-5)
    np.testing.assert_allclose(np.array(r0['recorder']), sums/counts, rtol=1e-5)
    assert (s[0, :, 1] < counts).all() and (s[1, :, 1] < counts).all()             # each rank saw only part of the data
    np.testing.assert_allclose(W[2], dwa_weights(torch.tensor(sums[1]/counts[1]), torch.tensor(sums[0]/counts[0]),
                                                 torch.ones(3))[0].numpy(), rtol=1e-5)
    # a rank on its own would have computed other weights: the reduction matters
    for r in (0, 1):
        L = torch.tensor(s[r, :, 0]/s[r, :, 1])
        w2 = dwa_weights(L[1], L[0], torch.ones(3))[0]
        alone = np.stack([np.ones(3), np.ones(3), w2.numpy(), dwa_weights(L[2], L[1], w2)[0].numpy()])
        assert not np.allclose(alone, W, atol=1e-4)

@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason='needs gloo')
def test_metrics_under_ddp_equal_one_process(tmp_path):
    "Per-task validation metrics under `distrib_ctx` (each rank validating half of the set) equal one process's on the whole set"
    r0, r1 = run_ranks('dist_metrics_worker.py', tmp_path, 100)
    assert r0['world_size'] == 2 and r0['n_valid'] == 20
    # [0]: fastai's summed valid_loss, a mean of per-batch means: it depends on how the batches are split, in one
    # process too. Every per-task loss and metric counts items, and must be exact.
    names = r0['names']
    assert {'mask_miou', 'colour_acc', 'box_iou'} <= set(names), names
    single, ddp0, ddp1 = (np.array(x[1:], float) for x in (r0['single'], r0['ddp'], r1['ddp']))
    np.testing.assert_allclose(ddp0, ddp1, rtol=1e-6)            # every rank reports the same values ...
    np.testing.assert_allclose(ddp0, single, rtol=1e-5)          # ... those of one process on the whole set

@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason='needs gloo')
def test_pseudo_labels_under_ddp(tmp_path):
    "PseudoLabel's second forward pass under DDP: training runs, each rank makes its own pseudo-targets, models and teachers stay identical"
    r0, r1 = run_ranks('dist_pseudo_worker.py', tmp_path, 100)
    h0, h1 = r0['history'][0], r1['history'][0]
    assert h0['mask_pseudo'] > 0 and h1['mask_pseudo'] > 0 and h0['mask_missing'] != h1['mask_missing']  # own shards
    np.testing.assert_allclose(r0['model'], r1['model'], rtol=0, atol=1e-6)
    np.testing.assert_allclose(r0['teacher'], r1['teacher'], rtol=0, atol=1e-6)
    assert not np.allclose(r0['model'], r0['teacher'])
