#!/usr/bin/env python
"""Which training strategy, with masks for only ~15% of the images? How batches are drawn x loss weighting (by loss and
by gradient), against single-task baselines at equal compute and at equal exposure, on the Oxford-IIIT Pet subset.

Every training image keeps its breed, but only a seeded `--mask-pct` share of them keeps its trimap (mimicking 3,000
masks against 33,000 labels). Two tasks: `SegmentationTask('trimap')` and `ClassificationTask('breed')`; the test
mIoU and breed accuracy are measured on the official test split (every image there has both).

Configurations (same body: `backbone()` of bench/common.py, EfficientNet-Lite0 ImageNet weights, light decoder):
- `balanced+<weighting>`: balanced batches as fastai_mtl 0.1 made them by default (`BalancedSampler(0.25)`: a quarter of every batch reserved for the rare
  trimaps) with the weightings `equal` (the reference), `dwa`, `uncertainty`, and the gradient weightings `upgrad`,
  `mgda`, `pcgrad`, `cagrad` (TorchJD: what each costs against equal weighting, and what it gives);
- `random+equal`: purely random batches (sampler `'random'`, fastai's shuffling): the trimaps' natural share of each
  batch;
- `epoch+equal` (one task per epoch), `task+equal` (task batches in turn), `rounds+equal` (the same, one optimiser
  step per round: `TaskRounds`);
- `seg-only`, `breed-only`: one task alone, trained on the images that carry it, **at equal compute** (as many
  batches as every other configuration);
- `seg-only=exposure`: the trimap task alone **at equal exposure**: as many labelled trimaps as `balanced+equal` of the
  same seed saw (its batches: those trimaps / bs); `breed-only=exposure` likewise for the breeds (with `--breed-pct`);
- `balanced+<weighting>+pseudo`: the same with `PseudoLabel` (fastai_mtl.pseudo) on every task, default settings
  (bench/pseudo.py; not run by default).

Equal compute: every configuration but `seg-only=exposure` makes the same number of training batches of `--bs`
images (`--epochs` passes over the training images in random batches; a mode whose epochs have another length runs
as many epochs as bring it closest). 'rounds' steps once per pair of batches. Exposure (labelled items and batches with
any, per task, summed over the run) is recorded for every run (`TaskLossRecorder`). Training: `fit_one_cycle` on
the unfrozen model, body at `--lr`/10, heads at `--lr`; no validation during training, one at the end, recording
each test image's statistics: the differences to `balanced+equal` come with paired bootstrap intervals over the test
images and the seeds (`fastai_mtl.compare.paired_bootstrap`).

Each run is a process of its own (peak RSS, and on CUDA `torch.cuda.max_memory_allocated`), forked from a
`multiprocessing` fork server that has imported the libraries once; seeds run in turn, the configurations in a rotated
order per seed (`balanced+equal` first: `seg-only=exposure` needs its exposure). Images are resized once into a
temporary cache of lossless PNGs, with the resampling of fastai's `Resize` (the runs give the same results as from
the originals), so that decoding full-size JPEGs does not dominate the time on CPU (`--no-cache`: the originals).

    python bench/strategies.py [--data PATH] [--size 64] [--bs 16] [--epochs 3] [--seeds 0 1 2] [--configs ...]
    python bench/strategies.py --quick --out quick_results     # tiny end-to-end check (32 px, few images, 1 epoch)
"""
import argparse, json, os, statistics, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import *  # noqa: E402,F401  (DEFAULT_DATA, RESULTS, backbone, check_data, pets_split, set_threads, ...)

WEIGHTINGS = ('equal', 'dwa', 'uncertainty', 'upgrad', 'mgda', 'pcgrad', 'cagrad')
BASELINES = ('seg-only', 'seg-only=exposure', 'breed-only', 'breed-only=exposure')
EXPOSED = {'seg-only=exposure': 'trimap', 'breed-only=exposure': 'breed'}   # baseline at equal exposure: the task it matches
CONFIGS = ([f'balanced+{w}' for w in WEIGHTINGS] + ['random+equal', 'epoch+equal', 'task+equal', 'rounds+equal']
           + list(BASELINES[:3]))
EXTRA = ['balanced+equal+pseudo', 'balanced+dwa+pseudo', 'breed-only=exposure']   # not run by default (bench/pseudo.py runs them)
ALL = CONFIGS + EXTRA
REFERENCE = 'balanced+equal'
QUICK_CONFIGS = ['balanced+equal', 'balanced+upgrad', 'random+equal', 'seg-only=exposure']

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=Path, default=DEFAULT_DATA, help=DATA_HELP)
    p.add_argument('--size', type=int, default=64, help='image size (px); a GPU run would use 128-224')
    p.add_argument('--bs', type=int, default=16)
    p.add_argument('--epochs', type=int, default=3, help='budget: passes over the training images in random batches')
    p.add_argument('--lr', type=float, default=2e-3, help='one-cycle peak lr of the heads (body: lr/10)')
    p.add_argument('--mask-pct', type=float, default=0.15, help='share of training images keeping their trimap')
    p.add_argument('--breed-pct', type=float, default=1., help='share of training images keeping their breed label')
    p.add_argument('--pseudo-kw', type=json.loads, default={}, metavar='JSON',
                   help='keyword arguments of PseudoLabel in the +pseudo configurations, e.g. \'{"weight": 0.3, "start": 0.5}\' '
                        '("max_lighting": x gives strong=strong_tfms(max_lighting=x))')
    p.add_argument('--mask-seed', type=int, default=0, help='seed of the choice of those images (same for every run)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='training seeds (one full set of runs each)')
    p.add_argument('--configs', nargs='+', default=None, metavar='CONFIG', help=f'subset of {ALL}')
    p.add_argument('--threads', type=int, default=2, help='torch CPU threads per run')
    p.add_argument('--n-boot', type=int, default=2000, help='bootstrap replicates of the intervals')
    p.add_argument('--n-train', type=int, default=None, help='use only this many training images (seeded)')
    p.add_argument('--n-test', type=int, default=None, help='use only this many test images (seeded)')
    p.add_argument('--no-cache', action='store_true', help='read the full-size originals in every run')
    p.add_argument('--quick', action='store_true',
                   help=f'tiny end-to-end check: 32 px, 48 training / 24 test images, bs 4, 1 epoch, one seed, {QUICK_CONFIGS}')
    p.add_argument('--out', type=Path, default=RESULTS, help='folder for the results')
    p.add_argument('--name', default='strategies', help='results file names: NAME.json and NAME.md')
    p.add_argument('--render', action='store_true', help='only rewrite NAME.md (and the rows of NAME.json) from the runs saved in NAME.json')
    a = p.parse_args(argv)
    if a.quick:
        a.size, a.bs, a.epochs, a.seeds, a.n_train, a.n_test = 32, 4, 1, a.seeds[:1], 48, 24
        a.configs = a.configs or QUICK_CONFIGS
    a.configs = a.configs or CONFIGS
    bad = [c for c in a.configs if c not in ALL]
    if bad: p.error(f'unknown configuration(s) {bad}; choose from {ALL}')
    if any(c in EXPOSED for c in a.configs) and REFERENCE not in a.configs: p.error(f'{list(EXPOSED)} need {REFERENCE}')
    return a

# ---------------------------------------------------------------------------------------------------------------
# Data: the split, the masks kept, the cache of resized images
def experiment_df(a):
    "`pets_split` rows used here: `is_valid` = the official test split; trimaps kept for a seeded `mask_pct` of training rows"
    import numpy as np
    df = pets_split(a.data)
    df['is_valid'] = df.is_test  # the 50 held-out trainval images (kept for the head box elsewhere) train here
    rng = np.random.default_rng(a.mask_seed)
    train, test = df.index[~df.is_valid], df.index[df.is_valid]
    if a.n_train: train = np.sort(rng.choice(train, min(a.n_train, len(train)), replace=False))
    if a.n_test: test = np.sort(rng.choice(test, min(a.n_test, len(test)), replace=False))
    df = df.loc[np.concatenate([train, test])].copy()
    keep = rng.choice(train, max(1, round(a.mask_pct*len(train))), replace=False)
    df['has_mask'] = df.is_valid | df.index.isin(keep)
    df.loc[~df.has_mask, 'trimap'] = None
    keep = np.random.default_rng([a.mask_seed, 1]).choice(train, max(1, round(a.breed_pct*len(train))), replace=False)
    df['has_breed'] = df.is_valid | df.index.isin(keep)
    df['breed'] = df.breed.astype(object)
    df.loc[~df.has_breed, 'breed'] = None
    return df

def build_cache(a, df, dest:Path):
    "Images and trimaps of `df`, squished to `size` once, as fastai's `Resize(size, method='squish')` would (bilinear / nearest)"
    from PIL import Image
    for col, resample in (('fn', Image.BILINEAR), ('trimap', Image.NEAREST)):
        for f in df[col].dropna():
            o = dest/f
            o.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(a.data/f) as im:
                im = im.convert('RGB') if col == 'fn' else im
                im.resize((a.size, a.size), resample).save(o.with_suffix('.png') if col == 'fn' else o)
    df['fn'] = df.fn.map(lambda f: str(Path(f).with_suffix('.png')))
    return df

def config_tasks(cfg):
    from fastai_mtl.all import SegmentationTask, ClassificationTask, TRIMAP_CODES, TRIMAP_CODE_MAP
    seg, breed = SegmentationTask('trimap', TRIMAP_CODES, code_map=TRIMAP_CODE_MAP), ClassificationTask('breed')
    return {'seg-only': [seg], 'seg-only=exposure': [seg], 'breed-only': [breed], 'breed-only=exposure': [breed]}.get(cfg, [seg, breed])

def make_dls(a, df, cfg, path, stats):
    from fastai.vision.all import aug_transforms, Normalize
    from fastai_mtl.all import MTLDataLoaders
    if cfg.startswith('seg-only'): df = df[df.has_mask]
    if cfg.startswith('breed-only'): df = df[df.has_breed]
    n_lab = int((~df.is_valid & (df.has_breed if cfg.startswith('breed-only') else df.has_mask)).sum())
    if n_lab < a.bs: sys.exit(f'{cfg}: {n_lab} labelled training images, fewer than a batch of {a.bs}: lower --bs')
    return MTLDataLoaders.from_df(df, path, 'fn', config_tasks(cfg), valid_col='is_valid', size=a.size, bs=a.bs,
                                  num_workers=0, batch_tfms=[*aug_transforms(), Normalize.from_stats(*stats)])

# ---------------------------------------------------------------------------------------------------------------
# Budget: batches per epoch of each configuration, epochs giving the budget
def batches_of(cfg, dls) -> tuple:
    "`(sampler, rounds)`: how `cfg` draws its training batches, and whether it steps once per round of task batches"
    from fastai_mtl.samplers import BalancedSampler, ShuffleSampler, TaskBatchSampler, TaskEpochSampler
    mode = cfg.split('+')[0]
    if mode in ('task', 'rounds'):   # rounds making an epoch as long as a random one
        per_task = max(1, round(ShuffleSampler().n_batches(dls.train) / len(dls.tasks)))
        return TaskBatchSampler(epoch_len=per_task), mode == 'rounds'
    # 'balanced': fastai_mtl 0.1's default (a quarter of every batch for the rare task), what results/strategies.json measured;
    # the default is now half (bench/mtl_pays.py)
    return {'balanced': lambda: BalancedSampler(0.25), 'random': ShuffleSampler, 'epoch': TaskEpochSampler}[mode](), False

def epoch_lengths(cfg, dls, n:int) -> list:
    "Training batches in each of the first `n` epochs of `cfg`"
    if cfg in BASELINES: return [len(dls.train)]*n
    s, _ = batches_of(cfg, dls)
    res = []
    for e in range(n):
        s.set_epoch(e); res.append(s.n_batches(dls.train))
    return res

def epochs_for(cfg, dls, budget:int) -> int:
    "Number of epochs whose batches come closest to `budget` (ties: fewer)"
    lens = epoch_lengths(cfg, dls, 4*budget + 4)
    tot, best = 0, (budget, 0)
    for n, l in enumerate(lens, 1):
        tot += l
        if abs(tot - budget) < best[0]: best = (abs(tot - budget), n)
        if tot >= budget: break
    return max(best[1], 1)

# ---------------------------------------------------------------------------------------------------------------
# Worker: one configuration, one seed, in a process of its own
def run_config(a, cfg:str, seed:int, budget:int, cache:Path=None) -> dict:
    "Train `cfg` with `seed` for `budget` batches; its test metrics, costs and per-task loss records"
    set_threads(a.threads)
    import torch
    from fastai.vision.all import set_seed, Callback, CancelValidException
    from fastai_mtl.all import mtl_learner, TaskLossRecorder, TaskRounds, TaskEpochSampler, TaskBatchSampler, UseSampler
    path, df = a.data, experiment_df(a)
    if cache is not None: df['fn'], path = df.fn.map(lambda f: str(Path(f).with_suffix('.png'))), cache
    if torch.cuda.is_available(): torch.cuda.reset_peak_memory_stats()
    arch, pretrained, stats, arch_name = backbone()
    set_seed(seed)
    dls = make_dls(a, df, cfg, path, stats)
    extra, kw = [], {}
    if cfg not in BASELINES:
        smp, rounds = batches_of(cfg, dls)
        kw = dict(weighting=cfg.split('+')[1], sampler=smp)
        if rounds: extra.append(TaskRounds())
    if cfg.endswith('+pseudo'):
        from fastai_mtl.pseudo import PseudoLabel, strong_tfms
        pkw = dict(getattr(a, 'pseudo_kw', {}))
        if 'max_lighting' in pkw: pkw['strong'] = strong_tfms(max_lighting=pkw.pop('max_lighting'))   # JSON cannot name transforms
        extra.append(PseudoLabel(**pkw))

    class Measure(Callback):
        "No validation during `fit`; count training batches and optimiser steps; each batch's per-task losses"
        order = -50
        def __init__(self): self.batches, self.steps, self.losses, self.counts, self.active = 0, 0, [], [], True
        def before_validate(self):
            if self.active: raise CancelValidException()
        def after_loss(self):
            if not self.training: return
            self.batches += 1
            self.losses.append([round(float(v), 5) for v in self.loss_func.last_losses])
            self.counts.append([int(v) for v in self.loss_func.last_counts])
        def after_step(self): self.steps += 1

    m = Measure()
    learn = mtl_learner(dls, arch, pretrained=pretrained, decoder='light', cbs=[m, *extra], **kw)
    learn.unfreeze()
    n_epochs = epochs_for(cfg, dls, budget)
    if cfg in EXPOSED:   # `budget` is then the number of batches: fastai's epochs of those batches exactly
        dls.train.sampler = TaskBatchSampler(epoch_len=budget)
        n_epochs = 1
    rss0 = rss_mb()
    with learn.no_bar(), learn.no_logging(), Timer() as t:
        learn.fit_one_cycle(n_epochs, slice(a.lr/10, a.lr))
        if torch.cuda.is_available(): torch.cuda.synchronize()
    peak = peak_rss_mb()
    m.active = False
    with learn.no_bar(), learn.no_logging(): vals = learn.validate()
    mets = dict(zip(['valid_loss'] + [mt.name for mt in learn.metrics], [None if v is None else float(v) for v in vals]))
    item_stats = {k: v.tolist() for k, v in learn.item_stats().items() if k in ('trimap_miou', 'breed_acc')}
    rec = next(c for c in learn.cbs if isinstance(c, TaskLossRecorder))
    dwa = learn.weighting if type(learn.weighting).__name__ == 'DWA' else None
    alt = getattr(learn, 'use_sampler', None)
    by_epoch = alt is not None and isinstance(alt.sampler, TaskEpochSampler)
    res = dict(config=cfg, seed=seed, tasks=[t.name for t in dls.tasks],
               sampler=cfg.split('+')[0] if '+' in cfg else None, weighting=cfg.split('+')[1] if '+' in cfg else None,
               pseudo=extra[0].df.to_dict('records') if extra else None,
               trimap_miou=mets.get('trimap_miou'), breed_acc=mets.get('breed_acc'), metrics=mets,
               wall_s=t.wall, cpu_s=t.cpu, rss0_mb=rss0, peak_rss_mb=peak, train_mem_mb=peak - rss0,
               epochs=n_epochs, batches=m.batches, steps=m.steps, n_train=len(dls.train_ds), n_test=len(dls.valid_ds),
               epoch_tasks=alt.history().groupby('epoch').task.first().tolist() if by_epoch else None,
               epoch_rows=rec.df.to_dict('records'), batch_losses=m.losses, batch_counts=m.counts,
               dwa_history=None if dwa is None else dwa.history.reset_index().to_dict('records'),
               final_weights=learn.weighting.weights.tolist(), arch=arch_name, item_stats=item_stats,
               exposure={f'{t.name}_{k}': int(rec.df[f'{t.name}_{k}'].sum()) for t in dls.tasks for k in ('items', 'batches')})
    if torch.cuda.is_available(): res['cuda_peak_mb'] = torch.cuda.max_memory_allocated()/2**20
    return res

# ---------------------------------------------------------------------------------------------------------------
# Parent: cache, runs, table
def _child(conn, a, cfg, seed, budget, cache):
    "Body of a run's process: `run_config`, its result (or traceback) sent back through `conn`, its prints kept"
    import contextlib, io, traceback
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out): conn.send(('ok', run_config(a, cfg, seed, budget, cache)))
    except BaseException: conn.send(('error', out.getvalue()[-3000:] + traceback.format_exc()))
    finally: conn.close()

def run_in_process(ctx, a, cfg, seed, budget, cache) -> dict:
    "Run `cfg` in a fresh process forked from the fork server (libraries imported once, nothing trained there)"
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(send, a, cfg, seed, budget, cache))
    p.start(); send.close()
    try: status, res = recv.recv()
    except EOFError: status, res = 'error', f'the process died (exit code {p.join() or p.exitcode})'
    p.join()
    if status != 'ok': raise RuntimeError(f'{cfg} (seed {seed}) failed:\n{res}')
    return res

def stats_of(xs):
    xs = [x for x in xs if x is not None]
    if not xs: return dict(mean=None, median=None, min=None, max=None, sd=None)
    return dict(mean=statistics.fmean(xs), median=statistics.median(xs), min=min(xs), max=max(xs),
                sd=statistics.stdev(xs) if len(xs) > 1 else None)

KEYS = ('trimap_miou', 'breed_acc', 'wall_s', 'cpu_s', 'peak_rss_mb', 'train_mem_mb', 'batches', 'steps', 'epochs')
EXPOSURE = ('trimap_items', 'trimap_batches', 'breed_items')

def _ratio(s): return None if s[1] == 0 else float(s[0]/s[1])

def _miou(s):
    import numpy as np
    n = int(round(len(s) ** .5)); cm = np.asarray(s, dtype=float).reshape(n, n)
    inter, t, p = np.diag(cm), cm.sum(1), cm.sum(0)
    with np.errstate(invalid='ignore', divide='ignore'): iou = np.where(t + p > 0, inter/(t + p - inter), np.nan)
    return None if cm.sum() == 0 else float(np.nanmean(iou))

def aggregate(runs:list, configs:list, reference:str=REFERENCE, n_boot:int=2000) -> list:
    "One row per configuration: mean/min/max/sd over seeds of each key, exposure, ratios to the reference, paired intervals"
    rows = []
    for c in configs:
        rs = [r for r in runs if r['config'] == c]
        if not rs: continue
        row = dict(config=c, sampler=rs[0]['sampler'], weighting=rs[0]['weighting'], seeds=[r['seed'] for r in rs])
        for k in KEYS + (('cuda_peak_mb',) if 'cuda_peak_mb' in rs[0] else ()): row[k] = stats_of([r.get(k) for r in rs])
        for k in EXPOSURE: row[k] = stats_of([r.get('exposure', {}).get(k) for r in rs])
        rows.append(row)
    ref = next((r for r in rows if r['config'] == reference), None)
    for r in rows:
        for k in ('wall_s', 'cpu_s', 'peak_rss_mb', 'train_mem_mb') + (('cuda_peak_mb',) if 'cuda_peak_mb' in r else ()):
            # costs: the median over seeds, robust to a run slowed by another job on the machine
            r[f'{k}_ratio'] = r[k]['median']/ref[k]['median'] if ref and ref[k]['median'] else None
    if ref is None: return rows
    from fastai_mtl.compare import paired_bootstrap
    ref_runs = {x['seed']: x for x in runs if x['config'] == reference}
    for r in rows:
        for key, score in (('trimap_miou', _miou), ('breed_acc', _ratio)):
            mine = {x['seed']: x for x in runs if x['config'] == r['config'] and key in x.get('item_stats', {})}
            seeds = sorted(set(mine) & {s for s, x in ref_runs.items() if key in x.get('item_stats', {})})
            if not seeds or r['config'] == reference: continue
            t = paired_bootstrap({'ref': [ref_runs[s]['item_stats'][key] for s in seeds], 'c': [mine[s]['item_stats'][key] for s in seeds]},
                                 score, n_boot=n_boot).loc['c']
            r[f'{key}_diff'] = dict(diff=float(t['diff']), low=float(t['diff_low']), high=float(t['diff_high']), p_le_0=float(t['p_le_0']))
    return rows

def fmt(s, d=3, spread=True):
    "`mean ± half-range` (over seeds) of a `stats_of` dict"
    if s['mean'] is None: return '—'
    if spread and s['max'] is not None and s['max'] != s['min']: return f"{s['mean']:.{d}f} ± {(s['max']-s['min'])/2:.{d}f}"
    return f"{s['mean']:.{d}f}"

def table(rows:list, meta:dict) -> str:
    ref = meta['reference']
    mem = 'cuda_peak_mb' if meta['device'].startswith('cuda') else 'peak_rss_mb'
    nb = meta.get('n_breeds', meta['n_train'])
    l = [f"Strategies, {meta['arch']}, {meta['size']} px, bs {meta['bs']}, {meta['n_train']} training images of which "
         f"{meta['n_masks']} keep a trimap" + ('' if nb == meta['n_train'] else f" and {nb} a breed") + f", {meta['n_test']} "
         f"test images, budget {meta['budget_batches']} batches (equal compute; `*-only=exposure`: as many labelled items "
         f"of the task as {ref}), seeds {meta['seeds']}, {meta['device']} "
         f"({meta['threads']} thread(s)). Mean ± half the range over seeds; Δ: difference to {ref} with a 95% interval "
         '(paired bootstrap over the test images and the seeds).', '',
         '| configuration | test mIoU | Δ mIoU [95% CI] | breed accuracy | Δ accuracy [95% CI] | trimaps seen | batches with a trimap | '
         'breeds seen | batches | steps | wall / ref | peak memory / ref |',
         '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    r2 = lambda v: '—' if v is None else f'{v:.2f}'
    def d(r, k):
        x = r.get(f'{k}_diff')
        return '' if x is None else f"{x['diff']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}]"
    for r in rows:
        name = r['config'] + (' (ref)' if r['config'] == ref else '')
        l.append(f"| {name} | {fmt(r['trimap_miou'])} | {d(r, 'trimap_miou')} | {fmt(r['breed_acc'])} | {d(r, 'breed_acc')} | "
                 f"{fmt(r['trimap_items'], 0, False)} | {fmt(r['trimap_batches'], 0, False)} | {fmt(r['breed_items'], 0, False)} | "
                 f"{fmt(r['batches'], 0, False)} | {fmt(r['steps'], 0, False)} | {r2(r['wall_s_ratio'])} | {r2(r[mem + '_ratio'])} |")
    l += ['', 'Exposure: labelled items seen (summed over the run, mean over seeds) and batches holding any. Costs: ratios of '
          'the medians over seeds (a run slowed by another job on the machine does not move them). "peak memory": '
          "the run's peak RSS" + (' (CUDA: max allocated)' if mem == 'cuda_peak_mb' else '') + '; "ref": ' + ref + '.',
          f"Load average at the end: {meta['load_avg_1min_at_end']:.1f} on {meta['cpus']} CPUs; total {meta['total_s']} s."]
    return '\n'.join(l)

def render(a):
    "Rows and table again from the runs of a saved NAME.json (after a change to the aggregation or the table)"
    f = a.out/f'{a.name}.json'
    res = json.loads(f.read_text())
    configs = list(dict.fromkeys(r['config'] for r in res['runs']))
    res['rows'] = aggregate(res['runs'], [c for c in ALL if c in configs], n_boot=a.n_boot)
    md = table(res['rows'], {**res['meta'], 'reference': res['meta']['reference'] or '(none)'})
    f.write_text(json.dumps(res, indent=1)); (a.out/f'{a.name}.md').write_text(md + '\n')
    print(md)

def main(argv=None):
    a = parse(argv)
    if a.render: return render(a)
    check_data(a.data)
    import multiprocessing as mp
    ctx = mp.get_context('forkserver')  # each run in a fresh process (its own peak memory), without re-importing torch
    ctx.set_forkserver_preload(['fastai.vision.all', 'fastai_mtl.all'])
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        df = experiment_df(a)
        cache = None
        if not a.no_cache:
            cache = Path(tmp)/'data'
            build_cache(a, df.copy(), cache)
        # the budget, from the training set as random batches see it
        n_train, n_masks = int((~df.is_valid).sum()), int((~df.is_valid & df.has_mask).sum())
        n_breeds = int((~df.is_valid & df.has_breed).sum())
        budget = a.epochs * (n_train // a.bs)
        print(f'{n_train} training images ({n_masks} with a trimap, {n_breeds} with a breed), {int(df.is_valid.sum())} test images, '
              f'{a.size} px, budget {budget} batches of {a.bs}; {len(a.configs)} configurations x {len(a.seeds)} seed(s)', flush=True)
        runs = []
        for i, seed in enumerate(a.seeds):
            rest = [c for c in a.configs if c != REFERENCE and c not in EXPOSED]
            k = (i * len(rest)) // max(len(a.seeds), 1)
            order = ([REFERENCE] if REFERENCE in a.configs else []) + rest[k:] + rest[:k]   # rotated, but the reference first
            order += [c for c in a.configs if c in EXPOSED]
            for c in order:
                b = budget
                if c in EXPOSED:   # as many labelled items of its task as the reference saw with this seed
                    ref = next(r for r in runs if r['config'] == REFERENCE and r['seed'] == seed)
                    b = max(1, round(ref['exposure'][f'{EXPOSED[c]}_items'] / a.bs))
                r = run_in_process(ctx, a, c, seed, b, cache)
                runs.append(r)
                fm = lambda v: '  —  ' if v is None else f'{v:.3f}'
                print(f"seed {seed} {c:<18} mIoU {fm(r['trimap_miou'])} acc {fm(r['breed_acc'])} {r['wall_s']:6.1f} s "
                      f"{r['batches']:4d} batches {r['steps']:4d} steps, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    import torch, platform
    rows = aggregate(runs, a.configs, n_boot=a.n_boot)
    arch = runs[0]['arch']
    meta = dict(data=a.data.name, arch=arch, size=a.size, bs=a.bs, epochs=a.epochs, lr=a.lr, mask_pct=a.mask_pct,
                breed_pct=a.breed_pct, mask_seed=a.mask_seed, seeds=a.seeds, n_train=n_train, n_masks=n_masks,
                n_breeds=n_breeds, n_test=runs[0]['n_test'],
                budget_batches=budget, pseudo_kw=a.pseudo_kw, reference=REFERENCE if REFERENCE in a.configs else None, quick=a.quick,
                cache=not a.no_cache, threads=a.threads, cpus=os.cpu_count(),
                device=('cuda: ' + torch.cuda.get_device_name()) if torch.cuda.is_available() else 'cpu',
                python=platform.python_version(), torch=torch.__version__, load_avg_1min_at_end=os.getloadavg()[0],
                total_s=round(time.time() - t0),
                training='fit_one_cycle on the unfrozen model, body lr/10 (slice(lr/10, lr)), no validation until the end',
                budget_rule='same number of training batches of bs images for every configuration (nearest whole epoch), '
                            'but seg-only=exposure (breed-only=exposure): as many labelled trimaps (breeds) as balanced+equal '
                            'saw with the same seed')
    md = table(rows, {**meta, 'reference': meta['reference'] or '(none)'})
    print('\n' + md)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out/f'{a.name}.json').write_text(json.dumps(dict(meta=meta, rows=rows, runs=runs), indent=1))
    (a.out/f'{a.name}.md').write_text(md + '\n')
    print(f"written to {a.out/a.name}.json and .md")

if __name__ == '__main__': main()
