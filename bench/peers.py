#!/usr/bin/env python
"""What a model costs and what it reaches, against what a user would otherwise write: the same trimap + breed
(+ head box) problem on the Oxford-IIIT Pet subset, trained by fastai_mtl (each segmentation decoder it offers), by
a hand-written PyTorch loop, by segmentation_models_pytorch's `Unet` with a classification head (`aux_params`), and
by separate single-task fastai learners; side by side in one run, each configuration in its own process.

Configurations (resnet18 from scratch for every encoder, `--size` px, bs `--bs`, `--epochs` epochs of one-cycle
AdamW-style training at `--lr`; the same training images, batches drawn by the same sampler and seed wherever the
DataLoaders are the library's):

- `mtl unet (default)`, `mtl dynamic`, `mtl light`: `mtl_learner(dls, resnet18, decoder=...)` on trimap + breed;
- `mtl unet + box`: the three tasks (what adding the classification and box heads costs: compare with `mtl seg only`);
- `mtl seg only`: the trimap task alone, the default decoder;
- `hand loop`: the `mtl unet (default)` model and `MaskedMultiLoss`, trained by a plain PyTorch loop over the same
  batches (`torch.optim.AdamW`, `OneCycleLR`): what the fastai `Learner` costs;
- `smp Unet+aux`: `smp.Unet('resnet18', encoder_weights=None, classes=2, aux_params=dict(classes=3))` and a
  two-line masked loss (cross-entropy ignoring the trimap border and missing labels) in the same hand loop and batches;
- `separate learners`: fastai's `unet_learner` (trimap) and `vision_learner` (breed), each trained the same number of
  epochs on the same images with `fit_one_cycle`; their times and peak memories added.

Measured: median seconds per training batch (data loading included, after 2 warm-up batches), peak RSS of the
process (on CUDA: max allocated), test mIoU and breed accuracy on the official test split, head-box IoU on the 50
held-out trainval images (`mtl unet + box`). Writes `peers.json` and `.md`.

    python bench/peers.py [--size 96] [--epochs 8] [--seeds 0 1] [--configs ...] [--quick]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import *

CONFIGS = ['mtl unet (default)', 'mtl dynamic', 'mtl light', 'mtl unet + box', 'mtl seg only', 'hand loop',
           'smp Unet+aux', 'separate learners']
QUICK = dict(size=32, epochs=1, bs=8, seeds=[0], n_train=24, n_test=16, configs=['mtl unet (default)', 'hand loop', 'smp Unet+aux'])

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=Path, default=DEFAULT_DATA, help=DATA_HELP)
    p.add_argument('--size', type=int, default=96)
    p.add_argument('--bs', type=int, default=16)
    p.add_argument('--epochs', type=int, default=8)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--configs', nargs='+', default=CONFIGS, choices=CONFIGS, metavar='CONFIG')
    p.add_argument('--n-train', type=int, default=0, help='training images (0: all)')
    p.add_argument('--n-test', type=int, default=0, help='test images (0: all)')
    p.add_argument('--quick', action='store_true', help=f'end-to-end check in seconds: {QUICK}')
    p.add_argument('--out', type=Path, default=None)
    p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        given = {x.split('=')[0] for x in (argv if argv is not None else sys.argv[1:]) if x.startswith('--')}
        for k, v in QUICK.items():
            if '--' + k.replace('_', '-') not in given: setattr(a, k, v)
    if a.out is None: a.out = Path(tempfile.mkdtemp(prefix='peers_')) if a.quick else RESULTS
    return a

def split(a):
    "`pets_split`: train = trainval less 50 held-out images (valid: head boxes), test = the official test split"
    df = pets_split(a.data)
    df['is_train'] = ~df.is_valid
    if a.n_train: df = df[~df.is_train | df.index.isin(df[df.is_train].sample(a.n_train, random_state=0).index)]
    if a.n_test: df = df[~df.is_test | df.index.isin(df[df.is_test].sample(a.n_test, random_state=0).index)]
    return df

def mtl_dls(a, df, names):
    from fastai.vision.all import aug_transforms, Normalize, imagenet_stats
    from fastai_mtl.all import (MTLDataLoaders, SegmentationTask, ClassificationTask, BoxTask, TRIMAP_CODES,
                                TRIMAP_CODE_MAP, PET_BOX_COLS)
    tasks = {'trimap': SegmentationTask('trimap', TRIMAP_CODES, code_map=TRIMAP_CODE_MAP), 'breed': ClassificationTask('breed'),
             'head': BoxTask(PET_BOX_COLS, name='head')}
    return MTLDataLoaders.from_df(df[~df.is_test], a.data, 'fn', [tasks[n] for n in names], valid_col='is_holdout', size=a.size,
                                  bs=a.bs, num_workers=0, batch_tfms=[*aug_transforms(), Normalize.from_stats(*imagenet_stats)])

class BatchTimer:
    "Seconds of each training batch, loading included: call `tick()` once per batch"
    def __init__(self): self.t, self.times = None, []
    def tick(self):
        now = time.perf_counter()
        if self.t is not None: self.times.append(now - self.t)
        self.t = now
    def median(self): return statistics.median(self.times[2:] or self.times)

def evaluate(learn_or_model, df, a, names, dls):
    "Library metrics on test (trimap, breed) and valid (head box) with the library's metrics"
    from fastai_mtl.all import mtl_learner
    learn = learn_or_model
    res = {}
    for split_name, rows in (('test', df[df.is_test]), ('valid', df[df.is_holdout])):
        dl = dls.test_dl(rows, with_labels=True)
        with learn.no_bar(), learn.no_logging(): vals = learn.validate(dl=dl)
        mets = dict(zip([m.name for m in learn.metrics], vals[1:]))
        for k, v in mets.items():
            if k.endswith(('_miou', '_acc', '_iou')) and v is not None: res[f'{split_name}_{k}'] = float(v)
    return res

def worker(a):
    set_threads(a.threads)
    import numpy as np, torch, warnings
    warnings.filterwarnings('ignore')
    from fastai.vision.all import set_seed, Callback, resnet18, unet_learner, vision_learner, DataBlock, ImageBlock, \
        MaskBlock, CategoryBlock, ColReader, ColSplitter, Resize, aug_transforms, Normalize, imagenet_stats, PILMask, \
        ResizeMethod, CrossEntropyLossFlat, accuracy
    from fastai_mtl.all import mtl_learner, MaskedMultiLoss, TRIMAP_CODES, TRIMAP_CODE_MAP, IGNORE_INDEX, MISSING_LABEL
    cfg, _, seed = a.worker.partition('@'); seed = int(seed)
    df = split(a)
    rss0 = rss_mb()
    if torch.cuda.is_available(): torch.cuda.reset_peak_memory_stats()
    names = {'mtl unet + box': ['trimap', 'breed', 'head'], 'mtl seg only': ['trimap']}.get(cfg, ['trimap', 'breed'])
    timer, res = BatchTimer(), dict(config=cfg, seed=seed)
    class Tick(Callback):
        def before_batch(self):
            if self.training: timer.tick()
    set_seed(seed, reproducible=True)
    if cfg.startswith('mtl'):
        dls = mtl_dls(a, df, names)
        decoder = {'mtl dynamic': 'dynamic', 'mtl light': 'light'}.get(cfg, 'unet')
        learn = mtl_learner(dls, resnet18, pretrained=False, decoder=decoder, cbs=Tick())
        with learn.no_bar(), learn.no_logging(), Timer() as t: learn.fit_one_cycle(a.epochs, a.lr)
        res.update(evaluate(learn, df, a, names, dls), params=sum(p.numel() for p in learn.model.parameters()))
    elif cfg in ('hand loop', 'smp Unet+aux'):
        dls = mtl_dls(a, df, names)
        learn = mtl_learner(dls, resnet18, pretrained=False)   # the same model and loss (hand loop); the test metrics
        if cfg == 'hand loop': model, lossf = learn.model, learn.loss_func
        else:
            import segmentation_models_pytorch as smp
            from torch import nn
            import torch.nn.functional as F
            class SmpMTL(nn.Module):
                "smp's Unet with a classification head, returning `(mask logits, class logits)` as fastai_mtl's models do"
                def __init__(self):
                    super().__init__()
                    self.net = smp.Unet('resnet18', encoder_weights=None, classes=2, aux_params=dict(classes=dls.tasks[1].n_out))
                def forward(self, x): return tuple(self.net(x))
            model = SmpMTL().to(dls.device)
            def lossf(preds, m, y):   # the two-line masked loss
                return (F.cross_entropy(preds[0], m.long(), ignore_index=IGNORE_INDEX) +
                        (F.cross_entropy(preds[1], y.long(), ignore_index=MISSING_LABEL) if (y != MISSING_LABEL).any() else 0.))
            learn.model = model   # only for `validate` below: the learner's metrics on this model's outputs
        opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=a.epochs*len(dls.train), pct_start=0.25)
        with Timer() as t:
            for _ in range(a.epochs):
                model.train()
                for xb, *yb in dls.train:
                    timer.tick()
                    xb, yb = xb.as_subclass(torch.Tensor), [y.as_subclass(torch.Tensor) for y in yb]   # plain tensors, as a hand loop has
                    loss = lossf(model(xb), *yb)
                    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        res.update(evaluate(learn, df, a, names, dls), params=sum(p.numel() for p in model.parameters()))
    elif cfg == 'separate learners':
        from fastai.vision.all import PILImage
        tr = df[~df.is_test].copy()
        splitter = ColSplitter('is_holdout')
        code_lut = [TRIMAP_CODE_MAP.get(i, i) for i in range(256)]
        def get_mask(fn): return PILMask.create(a.data/fn).point(code_lut)
        item, batch = Resize(a.size, method=ResizeMethod.Squish), [*aug_transforms(), Normalize.from_stats(*imagenet_stats)]
        seg = DataBlock((ImageBlock, MaskBlock(TRIMAP_CODES)), get_x=ColReader('fn', pref=a.data), get_y=lambda r: get_mask(r.trimap),
                        splitter=splitter, item_tfms=item, batch_tfms=batch).dataloaders(tr, bs=a.bs, num_workers=0)
        cls = DataBlock((ImageBlock, CategoryBlock), get_x=ColReader('fn', pref=a.data), get_y=ColReader('breed'),
                        splitter=splitter, item_tfms=item, batch_tfms=batch).dataloaders(tr, bs=a.bs, num_workers=0)
        l1 = unet_learner(seg, resnet18, pretrained=False, loss_func=CrossEntropyLossFlat(axis=1, ignore_index=IGNORE_INDEX), cbs=Tick())
        l2 = vision_learner(cls, resnet18, pretrained=False, metrics=accuracy, cbs=Tick())
        with Timer() as t:
            for l in (l1, l2):
                with l.no_bar(), l.no_logging(): l.fit_one_cycle(a.epochs, a.lr)
        # score both with the library's metrics on the same test images: a model returning (mask, labels)
        dls = mtl_dls(a, df, names)
        learn = mtl_learner(dls, resnet18, pretrained=False)
        from torch import nn
        class Both(nn.Module):
            def __init__(self): super().__init__(); self.seg, self.cls = l1.model, l2.model
            def forward(self, x): return self.seg(x), self.cls(x)
        learn.model = Both().eval()
        res.update(evaluate(learn, df, a, names, dls), params=sum(p.numel() for l in (l1, l2) for p in l.model.parameters()))
    res.update(s_per_batch=timer.median(), n_batches=len(timer.times), train_wall_s=t.wall, peak_rss_mb=peak_rss_mb(),
               train_rss_mb=peak_rss_mb() - rss0)
    if torch.cuda.is_available(): res['cuda_peak_mb'] = torch.cuda.max_memory_allocated() / 2**20
    return res

def run_worker(a, key):
    args = [sys.executable, __file__, '--worker', key, '--data', str(a.data), '--size', str(a.size), '--bs', str(a.bs),
            '--epochs', str(a.epochs), '--lr', str(a.lr), '--threads', str(a.threads), '--n-train', str(a.n_train),
            '--n-test', str(a.n_test), '--out', str(a.out)]
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    line = next((l for l in out.stdout.splitlines() if l.startswith('RESULT ')), None)
    if line is None: raise RuntimeError(f'{key} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}')
    return json.loads(line[7:])

def mean(rs, k):
    v = [r[k] for r in rs if r.get(k) is not None]
    return statistics.fmean(v) if v else None

def table(rows, meta):
    f = lambda v, d=3: '—' if v is None else f'{v:.{d}f}'
    ref = rows.get('mtl unet (default)'); seg = rows.get('mtl seg only'); hand = rows.get('hand loop')
    mem = 'cuda_peak_mb' if meta['device'] != 'cpu' else 'train_rss_mb'
    l = [f"Oxford-IIIT Pet subset ({meta['data']}), resnet18 from scratch for every encoder, {meta['size']} px, bs {meta['bs']}, "
         f"{meta['epochs']} epochs (one-cycle, lr {meta['lr']}), seeds {meta['seeds']}, {meta['device']} ({meta['threads']} threads); "
         f"{meta['n_train']} training images, test mIoU / accuracy on {meta['n_test']} test images, box IoU on {meta['n_valid']} held-out images. "
         "Mean over seeds (each seed's values in the JSON).", '',
         '| configuration | s / batch | vs default | training memory (MB) | vs default | params (M) | test mIoU | test breed acc | valid box IoU |',
         '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for c, r in rows.items():
        l.append(f"| {c} | {f(r['s_per_batch'])} | {f(r['s_per_batch']/ref['s_per_batch'], 2) if ref else '—'} | "
                 f"{f(r[mem], 0)} | {f(r[mem]/ref[mem], 2) if ref and ref[mem] else '—'} | {r['params']/1e6:.1f} | "
                 f"{f(r.get('test_trimap_miou'))} | {f(r.get('test_breed_acc'))} | {f(r.get('valid_head_iou'))} |")
    l.append('')
    if ref and hand: l.append(f"- fastai_mtl / hand loop (same model, loss, batches): {ref['s_per_batch']/hand['s_per_batch']:.2f}x per batch.")
    box = rows.get('mtl unet + box')
    if seg and box: l.append(f"- Adding breed and head box to the segmentation model: {box['s_per_batch']/seg['s_per_batch']:.2f}x the time per "
                             f"batch, {box[mem]/seg[mem]:.2f}x the training memory of the segmentation model alone.")
    smp_r = rows.get('smp Unet+aux')
    if ref and smp_r: l.append(f"- Default model vs smp Unet+aux: {ref['s_per_batch']/smp_r['s_per_batch']:.2f}x per batch, test mIoU "
                               f"{f(ref.get('test_trimap_miou'))} vs {f(smp_r.get('test_trimap_miou'))}, breed accuracy "
                               f"{f(ref.get('test_breed_acc'))} vs {f(smp_r.get('test_breed_acc'))}.")
    l.append(f"- Training memory: peak RSS minus RSS at start of the process (on CUDA: max allocated). Total {meta['total_s']:.0f} s, "
             f"load average at the end {meta['load_avg']:.1f} on {meta['cpus']} CPUs.")
    return '\n'.join(l)

def main(argv=None):
    a = parse(argv)
    if a.worker: return print('RESULT ' + json.dumps(worker(a)), flush=True)
    check_data(a.data)
    import torch
    t0, runs = time.time(), []
    for i, s in enumerate(a.seeds):
        order = a.configs[i % len(a.configs):] + a.configs[:i % len(a.configs)]
        for c in order:
            r = run_worker(a, f'{c}@{s}')
            runs.append(r)
            print(f"seed {s} {c:<20} {r['s_per_batch']:.3f} s/batch, mIoU {r.get('test_trimap_miou', float('nan')):.3f}, "
                  f"acc {r.get('test_breed_acc', float('nan')):.3f} ({time.time()-t0:.0f} s)", flush=True)
    rows = {c: {k: mean([r for r in runs if r['config'] == c], k) for k in runs[0] if k not in ('config', 'seed')} |
               {k: mean([r for r in runs if r['config'] == c], k) for k in ('valid_head_iou', 'test_trimap_miou', 'test_breed_acc')}
            for c in a.configs}
    df = split(a)
    meta = dict(data=a.data.name, size=a.size, bs=a.bs, epochs=a.epochs, lr=a.lr, seeds=a.seeds, threads=a.threads,
                device='cuda: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', cpus=os.cpu_count(),
                n_train=int(df.is_train.sum()), n_test=int(df.is_test.sum()), n_valid=int(df.is_holdout.sum()),
                total_s=time.time() - t0, load_avg=os.getloadavg()[0], machine=machine(), quick=a.quick)
    md = table(rows, meta)
    print('\n' + md)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out/'peers.json').write_text(json.dumps(dict(meta=meta, rows=rows, runs=runs), indent=1))
    (a.out/'peers.md').write_text(md + '\n')
    print(f"written to {a.out/'peers.md'}")

if __name__ == '__main__': main()
