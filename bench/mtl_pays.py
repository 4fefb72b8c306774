#!/usr/bin/env python
"""Does multi-task learning pay at equal compute? One model on partial labels against each task trained alone for the
same number of optimiser steps, and against each task alone for as long as it needs, on the Oxford-IIIT Pet subset.

Settings (302 training images, labels removed from a seeded share of them; the metrics on held-out images):
- `trimaps15`: trimaps on 15% of the training images (45), breeds on all; measured on the 298 test images;
- `breeds30`: breeds on 30% (91), trimaps on all; measured on the 298 test images;
- `heads15`: head boxes on 15% (45), breeds on all; the breed measured on the test images and 50 held-out training
  images, the box on those 50 (the test split has no head boxes).

Configurations:
- `alone-<task>`: the task alone, every batch drawn from the images that carry it (fastai's shuffling of those rows);
- `mtl`: the library's defaults (`BalancedSampler()`: half of every batch reserved for the rare task; equal weights);
- `mtl,<option>=<value>,...`: what was tried on the way: `share` (the rare task's share of a batch), `res` (at most
  this share reserved), `aux` (the other task's loss weight), `gate=cos` (the other task's gradient kept in
  proportion to its cosine with the rare task's, Du et al. 2018, through TorchJD) or `gate=pcgrad`, `spec` (the last
  share of the steps with the encoder frozen), `finish` (the last share of the steps on the rare task's rows only).

Budgets: every run makes exactly `--budgets` optimiser steps of `--bs` images (a `FixedSteps` sampler: consecutive
epochs of the configuration's own sampler, cut at the budget), `fit_one_cycle` over them (body at `--lr`/10),
fastai's `aug_transforms`, no validation until the end. "Alone, as long as it needs" is the best of the alone runs
over every budget run, per seed, chosen on the test metric itself (optimistic for the baseline, so conservative for
multi-task learning). Differences to the task alone at the same budget come with 95% intervals of a paired bootstrap
over the test images and the seeds (`fastai_mtl.compare.paired_bootstrap`); costs are ratios of mean wall times of
runs made in the same process pool.

Model: EfficientNet-Lite0 with its ImageNet weights (`backbone()` of bench/common.py, batchnorm momentum 0.1), the
light segmentation decoder, fastai's classification head, the box head; 64 px images resized once into a cache of
PNGs (boxes scaled with them); one CPU thread per run, each run a process of its own. Each run appends a line to
`--out` (a JSON Lines file: metrics, per-item statistics, exposure, wall time); runs already there are skipped, so an
interrupted run resumes. `--summarise` writes the tables (`mtl_pays.md`, `mtl_pays.json` beside `--out`).

    python bench/mtl_pays.py                                   # the headline grid (results/mtl_pays.jsonl)
    python bench/mtl_pays.py --configs mtl,share=0.75,res=0.75 --budgets 150 300   # another recipe, same grid
    python bench/mtl_pays.py --summarise                       # tables only
    python bench/mtl_pays.py --quick --out DIR/q.jsonl         # a tiny end-to-end check (2 steps, 1 seed)
"""
import argparse, json, os, sys, time, traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import *  # noqa

SETTINGS = {
    'trimaps15': dict(rare='trimap', other='breed', pct={'trimap': 0.15, 'breed': 1.0}),
    'breeds30': dict(rare='breed', other='trimap', pct={'trimap': 1.0, 'breed': 0.3}),
    'heads15': dict(rare='head', other='breed', pct={'head': 0.15, 'breed': 1.0}),
}
BOX = ['x1', 'y1', 'x2', 'y2']
METRIC = {'trimap': 'trimap_miou', 'breed': 'breed_acc', 'head': 'head_iou'}
OPTIONS = {'share', 'res', 'aux', 'gate', 'spec', 'finish'}

def experiment_df(data, pct, mask_seed=0):
    "The pets split with each target kept on a seeded share `pct` of the training images (`is_valid`: the measured images)"
    import numpy as np
    df = pets_split(data)
    if 'head' not in pct: df['is_valid'] = df.is_test   # the 50 held-out images train: only the box needs them
    train = df.index[~df.is_valid]
    for i, (col, p) in enumerate(pct.items()):
        cols = BOX if col == 'head' else [col]
        pool = train[df.loc[train, cols].notna().all(axis=1)]
        keep = np.random.default_rng([mask_seed, i]).choice(pool, max(1, round(p*len(train))), replace=False)
        has = df.is_valid | df.index.isin(keep)
        for c in cols:
            df[c] = df[c].astype(object)
            df.loc[~has, c] = None
    return df

def build_cache(data, df, dest, size):
    "Images (bilinear) and trimaps (nearest) resized once to `size` x `size` PNGs under `dest`"
    from PIL import Image
    for col, resample in (('fn', Image.BILINEAR), ('trimap', Image.NEAREST)):
        for f in df[col].dropna():
            o = dest/f
            if col == 'fn': o = o.with_suffix('.png')
            if o.exists(): continue
            o.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(data/f) as im:
                im = im.convert('RGB') if col == 'fn' else im
                im.resize((size, size), resample).save(o)

class FixedSteps:
    "Sampler wrapper: exactly `n` batches per epoch, drawn from consecutive epochs of `inner`; the last `finish` of them only from rows labelled for task `rare`"
    def __init__(self, inner, n, finish=0., rare=0): self.inner, self.n, self.finish, self.rare, self.batch_tasks = inner, n, finish, rare, None
    def set_epoch(self, epoch): pass
    def n_batches(self, dl): return self.n
    def get_idxs(self, dl):
        res, n_main = [], self.n - round(self.n*self.finish)
        while len(res) < n_main*dl.bs:
            res += list(self.inner.get_idxs(dl))
        res = res[:n_main*dl.bs]
        pool = [int(i) for i in dl.target_matrix[self.rare].nonzero()[0]]
        while len(res) < self.n*dl.bs:
            res += dl.rng.sample(pool, len(pool))
        return res[:self.n*dl.bs]

def parse_config(cfg:str) -> tuple:
    "`(kind, options)`: 'alone-trimap' -> ('alone-trimap', {}); 'mtl,share=0.5' -> ('mtl', {'share': '0.5'})"
    kind, *rest = cfg.split(',')
    opts = dict(o.split('=', 1) for o in rest)
    if kind != 'mtl' and not kind.startswith('alone-'): raise ValueError(f'unknown configuration {cfg!r}')
    if bad := set(opts) - OPTIONS: raise ValueError(f'unknown option(s) {sorted(bad)} in {cfg!r}; options: {sorted(OPTIONS)}')
    if kind.startswith('alone-') and opts: raise ValueError(f'{cfg!r}: a task alone takes no option')
    return kind, opts

def run(a, setting, cfg, budget, seed, cache):
    set_threads(a.threads)
    import torch
    from fastai.vision.all import set_seed, Callback, CancelValidException, aug_transforms, Normalize, first, risinstance
    from fastai_mtl.all import (mtl_learner, MTLDataLoaders, SegmentationTask, ClassificationTask, TRIMAP_CODES, TRIMAP_CODE_MAP,
                                BoxTask, BalancedSampler, ShuffleSampler, StaticWeighting, JacobianDescent, TaskLossRecorder)
    S = SETTINGS[setting]
    df = experiment_df(a.data, S['pct'])
    df['fn'] = df.fn.map(lambda f: str(Path(f).with_suffix('.png')))
    for c, d in zip(BOX, ['width', 'height']*2):  # boxes onto the pre-resized images
        df[c] = [None if v is None or v != v else float(v)*a.size/s for v, s in zip(df[c], df[d])]
    mk = {'trimap': lambda: SegmentationTask('trimap', TRIMAP_CODES, code_map=TRIMAP_CODE_MAP), 'breed': lambda: ClassificationTask('breed'),
          'head': lambda: BoxTask(BOX, name='head')}
    kind, opts = parse_config(cfg)
    if kind.startswith('alone-'):
        t = kind[len('alone-'):]
        names = [t]
        df = df[df[BOX if t == 'head' else [t]].notna().all(axis=1)]
        sampler = ShuffleSampler()
    else:
        names = [S['rare'], S['other']]
        sampler = BalancedSampler(float(opts['share']), max_reserved=float(opts.get('res', 0.5))) if 'share' in opts else BalancedSampler()
    arch, pretrained, stats, arch_name = backbone()
    set_seed(seed, reproducible=True)
    dls = MTLDataLoaders.from_df(df, cache, 'fn', [mk[n]() for n in names], valid_col='is_valid', size=a.size, bs=a.bs,
                                 num_workers=0, sampler=FixedSteps(sampler, budget, float(opts.get('finish', 0))),
                                 batch_tfms=[*aug_transforms(), Normalize.from_stats(*stats)])
    class NoValid(Callback):
        order = -50
        def __init__(self): self.active = True
        def before_validate(self):
            if self.active: raise CancelValidException()
    nv = NoValid(); cbs = [nv]
    kw = {}
    if 'aux' in opts: kw['weighting'] = StaticWeighting({S['other']: float(opts['aux'])})
    if opts.get('gate') == 'cos':
        import torchjd.aggregation as A
        class PrimaryGate(A.Aggregator):
            "The rare task's gradient plus each other task's, scaled by its cosine with the rare task's when positive"
            def forward(self, J):
                g = J[0].clone()
                for r in J[1:]: g = g + torch.nn.functional.cosine_similarity(J[0], r, dim=0).clamp_min(0) * r
                return g
        kw['weighting'] = JacobianDescent(PrimaryGate())
    elif opts.get('gate') == 'pcgrad': kw['weighting'] = 'pcgrad'
    if 'spec' in opts:
        frac = float(opts['spec'])
        class Specialise(Callback):
            def before_batch(self):
                if self.training and self.pct_train >= 1 - frac and not getattr(self, 'done', False):
                    for p in self.learn.model.body.parameters(): p.requires_grad_(False)
                    self.done = True
        cbs.append(Specialise())
    learn = mtl_learner(dls, arch, pretrained=pretrained, decoder='light', cbs=cbs, **kw)
    learn.unfreeze()
    with learn.no_bar(), learn.no_logging(), Timer() as t:
        learn.fit_one_cycle(1, slice(a.lr/10, a.lr))
    nv.active = False
    with learn.no_bar(), learn.no_logging(): vals = learn.validate()
    mets = dict(zip([m.name for m in learn.metrics], [None if v is None else float(v) for v in vals[1:]]))
    rec = first(learn.cbs, risinstance(TaskLossRecorder)).df
    return dict(setting=setting, config=cfg, budget=budget, seed=seed, wall_s=t.wall, cpu_s=t.cpu, arch=arch_name, size=a.size, bs=a.bs,
                lr=a.lr, threads=a.threads, steps=int(rec[f'{names[0]}_batches'].sum()) if kind.startswith('alone-') else budget,
                exposure={f'{n}_items': int(rec[f'{n}_items'].sum()) for n in names},
                **{METRIC[n]: mets.get(METRIC[n]) for n in METRIC},
                item_stats={k: v.tolist() for k, v in learn.item_stats().items() if k in METRIC.values()})

# --- summaries ---------------------------------------------------------------------------------------------------
def _value_fns():
    from fastai_mtl.metrics import TaskMeanIoU, TaskAccuracy, TaskBoxIoU
    return {'trimap_miou': TaskMeanIoU(0, None, 2).value_of, 'breed_acc': TaskAccuracy(0, None).value_of, 'head_iou': TaskBoxIoU(0, None).value_of}

def _runs(rows) -> dict:
    "{(setting, config, budget): {seed: row}} (the last row of a repeated run wins)"
    res = {}
    for r in rows: res.setdefault((r['setting'], r['config'], r['budget']), {})[r['seed']] = r
    return res

def _labelled(stats):
    "The per-item statistics of the labelled items only, in order (a task alone sees only the measured images that carry it)"
    import numpy as np
    a = np.asarray(stats, dtype=np.float64)
    return a[a[:, -1] > 0] if a.shape[1] == 2 else a[a.sum(1) > 0]

def compare(rows, config='mtl', n_boot=2000, seed=0) -> list:
    """One row per setting, budget and task: `config` against the task alone at the same budget (paired bootstrap over
    the seeds both have and the measured images), against the task alone at its best budget, and the wall-time ratio"""
    import numpy as np, warnings
    from fastai_mtl.compare import paired_bootstrap
    V, R, out = _value_fns(), _runs(rows), []
    for s, S in SETTINGS.items():
        for b in sorted({b for (ss, c, b) in R if ss == s and c == config}):
            for task in (S['rare'], S['other']):
                k, alone = METRIC[task], f'alone-{task}'
                if (s, alone, b) not in R: continue
                seeds = sorted(set(R[(s, alone, b)]) & set(R[(s, config, b)]))
                if not seeds: continue
                st = {c: [_labelled(R[(s, c, b)][sd]['item_stats'][k]) for sd in seeds] for c in (alone, config)}
                # alone, as long as it needs: per seed, the budget with the best test value among those run
                budgets = sorted(bb for (ss, c, bb) in R if ss == s and c == alone and all(sd in R[(s, c, bb)] for sd in seeds))
                best = []
                for sd in seeds:
                    vals = {bb: R[(s, alone, bb)][sd][k] for bb in budgets}
                    best.append(max(vals, key=vals.get))
                st['best'] = [_labelled(R[(s, alone, bb)][sd]['item_stats'][k]) for sd, bb in zip(seeds, best)]
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore')
                    t = paired_bootstrap(st, V[k], ref=alone, n_boot=n_boot, seed=seed)
                    tb = paired_bootstrap({c: st[c] for c in ('best', config)}, V[k], ref='best', n_boot=n_boot, seed=seed)
                wall = lambda c: np.mean([R[(s, c, b)][sd]['wall_s'] for sd in seeds])
                exp = lambda c: np.mean([R[(s, c, b)][sd].get('exposure', {}).get(f'{task}_items', np.nan) for sd in seeds])
                out.append(dict(setting=s, budget=b, task=task, metric=k, rare=task == S['rare'], config=config, seeds=seeds,
                                alone=float(t.loc[alone, 'value']), mtl=float(t.loc[config, 'value']),
                                diff=float(t.loc[config, 'diff']), low=float(t.loc[config, 'diff_low']), high=float(t.loc[config, 'diff_high']),
                                best_alone=float(tb.loc['best', 'value']), best_budgets=best,
                                diff_best=float(tb.loc[config, 'diff']), low_best=float(tb.loc[config, 'diff_low']), high_best=float(tb.loc[config, 'diff_high']),
                                wall_ratio=float(wall(config)/wall(alone)), exposure_alone=float(exp(alone)), exposure_mtl=float(exp(config))))
    return out

def verdict(r) -> str:
    "'better' / 'worse' when the interval excludes 0, else 'no clear difference' (the acceptance's \"not worse\": `high >= 0`)"
    return 'better' if r['low'] > 0 else 'worse' if r['high'] < 0 else 'no clear difference'

def table(cmp:list, title:str) -> str:
    f = lambda x: f'{x:+.3f}'
    lines = [f'### {title}', '', '| setting | budget (steps) | task | alone, same steps | multi-task | Δ [95% interval] | verdict | '
             'alone, best budget | Δ to it | exposure (labelled items: alone / multi-task) | wall ratio |',
             '| --- | ---: | --- | ---: | ---: | --- | --- | ---: | --- | --- | ---: |']
    for r in cmp:
        lines.append(f"| {r['setting']} | {r['budget']} | {r['task']}{' (rare)' if r['rare'] else ''} | {r['alone']:.3f} | {r['mtl']:.3f} | "
                     f"{f(r['diff'])} [{f(r['low'])}, {f(r['high'])}] | {verdict(r)} | {r['best_alone']:.3f} (at {'/'.join(map(str, r['best_budgets']))}) | "
                     f"{f(r['diff_best'])} [{f(r['low_best'])}, {f(r['high_best'])}] | "
                     f"{r['exposure_alone']:.0f} / {r['exposure_mtl']:.0f} | x{r['wall_ratio']:.2f}{'*' if r.get('wall_from') == 'pool' else ''} |")
    return '\n'.join(lines)

def timed(cmp:list, timing:list) -> list:
    "`cmp` with `wall_ratio` from `timing` (runs made one at a time: the cost, side by side) for the recipes it ran; the others keep the pool's, marked `wall_from='pool'`"
    import numpy as np
    if not timing: return cmp
    R = _runs(timing)
    for r in cmp:
        alone = lambda k: (k[0], f"alone-{r['task']}", k[2])
        k = next((k for k in R if k[:2] == (r['setting'], r['config']) and alone(k) in R), None)
        if k is None: r['wall_from'] = 'pool'; continue
        r['wall_ratio'] = float(np.mean([x['wall_s'] for x in R[k].values()]) / np.mean([x['wall_s'] for x in R[alone(k)].values()]))
        r['wall_from'] = f'timing pass, budget {k[2]}'
    return cmp

def summarise(rows, out:Path, n_boot=2000, timing:list=None) -> dict:
    "Write `mtl_pays.md` and `mtl_pays.json` beside `out`: the default against each task alone, then every other recipe tried; wall ratios from `timing` runs when given"
    head = timed(compare(rows, 'mtl', n_boot), timing)
    tried = sorted({r['config'] for r in rows if r['config'].startswith('mtl,')})
    others = {c: timed(compare(rows, c, n_boot), timing) for c in tried}
    n = sorted({r['seed'] for r in rows})
    r0 = rows[0] if rows else {}
    md = [f"# Does multi-task learning pay at equal compute? (bench/mtl_pays.py)", '',
          f"Pets subset, {r0.get('arch', '?')}, {r0.get('size', '?')} px, batches of {r0.get('bs', '?')}, lr {r0.get('lr', '?')} (body /10), "
          f"`fit_one_cycle` over a fixed number of steps, seeds {n}; Δ: multi-task minus the task alone, 95% paired bootstrap "
          "interval over the measured images and the seeds. \"Alone, best budget\": the task alone at whichever budget run "
          "was best on the test metric, per seed (optimistic for the baseline). Exposure: labelled items of the task seen in "
          "training. Wall ratio: multi-task over alone" + (", from a separate timing pass (the runs of --timing: one at a time, "
          "budget 150, seed 0, one CPU thread) for the recipes it ran; * marks a ratio of runs of the same pool (two at once: "
          "noisy)" if timing else ", runs of the same pool (one CPU thread each)") + ".", '',
          table(head, 'The defaults (`mtl`: `BalancedSampler()`, equal weights)')]
    for c, cmp in others.items(): md += ['', table(cmp, f'`{c}`')]
    text = '\n'.join(md) + '\n'
    out.with_suffix('.md').write_text(text)
    res = dict(default=head, tried=others)
    out.with_suffix('.json').write_text(json.dumps(res, indent=1))
    return res

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=Path, default=DEFAULT_DATA, help=DATA_HELP)
    p.add_argument('--size', type=int, default=64)
    p.add_argument('--bs', type=int, default=16)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--threads', type=int, default=1, help='CPU threads per run')
    p.add_argument('--workers', type=int, default=1, help='runs at once (each in its own process)')
    p.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument('--configs', nargs='+', default=None, help="default: 'alone-<task>' for both tasks, and 'mtl'")
    p.add_argument('--budgets', type=int, nargs='+', default=[50, 150, 300])
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--out', type=Path, default=RESULTS/'mtl_pays.jsonl')
    p.add_argument('--summarise', action='store_true', help='only write the tables from --out')
    p.add_argument('--timing', type=Path, help='a JSON Lines file of runs made one at a time (e.g. --budgets 150 --seeds 0 --workers 1): the wall ratios')
    p.add_argument('--quick', action='store_true', help='a tiny end-to-end check: 2 steps, 32 px, seed 0, one setting')
    a = p.parse_args(argv)
    if a.quick: a.size, a.budgets, a.seeds, a.settings = 32, [2], [0], a.settings[:1]
    for c in a.configs or []:
        try: parse_config(c)
        except ValueError as e: p.error(str(e))
    return a

def main(argv=None):
    a = parse(argv)
    if a.summarise:
        rows = [json.loads(l) for l in a.out.read_text().splitlines()]
        timing = [json.loads(l) for l in a.timing.read_text().splitlines()] if a.timing else None
        summarise(rows, a.out, timing=timing); print(a.out.with_suffix('.md').name, 'written'); return
    check_data(a.data)
    cache = Path(os.environ.get('TMPDIR', '/tmp'))/f'fastai_mtl_pets{a.size}'
    for s in a.settings: build_cache(a.data, experiment_df(a.data, SETTINGS[s]['pct']), cache, a.size)
    done = set()
    if a.out.exists():
        for l in a.out.read_text().splitlines():
            r = json.loads(l); done.add((r['setting'], r['config'], r['budget'], r['seed']))
    jobs = [(s, c, b, seed) for seed in a.seeds for b in a.budgets for s in a.settings
            for c in (a.configs or [f"alone-{SETTINGS[s]['rare']}", f"alone-{SETTINGS[s]['other']}", 'mtl'])
            if (s, c, b, seed) not in done]
    import multiprocessing as mp
    ctx = mp.get_context('forkserver'); ctx.set_forkserver_preload(['fastai.vision.all', 'fastai_mtl.all'])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fm = lambda v: '  -  ' if v is None else f'{v:.3f}'
    with ctx.Pool(a.workers, maxtasksperchild=1) as pool:
        pending = [(j, pool.apply_async(run, (a, *j, cache))) for j in jobs]
        for (s, c, b, seed), res in pending:
            try: r = res.get()
            except Exception: print(f'{s} {c} b{b} s{seed} failed:\n{traceback.format_exc()}', flush=True); continue
            with open(a.out, 'a') as f: f.write(json.dumps(r) + '\n')
            print(f"{s:9} {c:28} b{b:<4} s{seed} mIoU {fm(r['trimap_miou'])} acc {fm(r['breed_acc'])} box {fm(r['head_iou'])} "
                  f"{r['wall_s']:.0f}s", flush=True)
    rows = [json.loads(l) for l in a.out.read_text().splitlines()]
    res = summarise(rows, a.out, n_boot=200 if a.quick else 2000)
    print(a.out.with_suffix('.md').read_text())
    return res

if __name__ == '__main__': main()
