#!/usr/bin/env python
"""Images per second through the whole loading + augmentation pipeline, fastai_mtl against fastai's own DataBlock.

Runs on the Oxford-IIIT Pet layout (default: the shared 3-breed subset) at 128 px, on CPU, in one process, with the
pipelines interleaved (A, B, C, A, B, C, ...) so that machine noise hits them alike; the table reports medians and
ratios to fastai's single-task segmentation DataBlock on the same files and transforms.

    python bench/data_throughput.py [--data PATH] [--size 128] [--bs 32] [--batches 8] [--repeats 3] [--workers 0]
"""
import argparse, json, os, platform, statistics, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, DEFAULT_DATA  # noqa: E402

def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=Path, default=DEFAULT_DATA)
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--batches', type=int, default=8, help='batches timed per repeat')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--workers', type=int, default=0, help='DataLoader worker processes (0: in the main process)')
    p.add_argument('--out', type=Path, default=ROOT/'bench'/'results')
    return p.parse_args()

def main():
    a = parse()
    if not (a.data/'images').is_dir(): sys.exit(f'no Oxford-IIIT Pet layout at {a.data} (pass --data)')
    from fastai.vision.all import (DataBlock, ImageBlock, MaskBlock, ColReader, ColSplitter, Resize, aug_transforms,
                                   set_seed, torch)
    from fastai_mtl.all import (MTLDataLoaders, SegmentationTask, ClassificationTask, BoxTask, pets_df, TRIMAP_CODES,
                                TRIMAP_CODE_MAP)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    df = pets_df(a.data)
    item, batch = Resize(a.size, method='squish'), aug_transforms()
    kw = dict(bs=a.bs, num_workers=a.workers)

    def fastai_seg():
        "fastai's own single-task segmentation DataBlock (image + trimap), same files and transforms"
        db = DataBlock(blocks=(ImageBlock, MaskBlock(['pet', 'background', 'border'])),
                       get_x=ColReader('fn', pref=a.data), get_y=ColReader('trimap', pref=a.data),
                       splitter=ColSplitter('is_test'), item_tfms=item, batch_tfms=batch)
        return db.dataloaders(df, **kw)
    def mtl(tasks):
        return lambda: MTLDataLoaders.from_df(df, a.data, 'fn', tasks(), valid_col='is_test', item_tfms=item,
                                              batch_tfms=batch, **kw)
    seg = lambda: [SegmentationTask('trimap', TRIMAP_CODES, code_map=TRIMAP_CODE_MAP)]
    three = lambda: seg() + [ClassificationTask('breed'), BoxTask(name='head')]
    pipelines = {'fastai DataBlock (image + mask)': fastai_seg, 'fastai_mtl (image + mask)': mtl(seg),
                 'fastai_mtl (image + mask + breed + box)': mtl(three)}
    dls = {k: f() for k,f in pipelines.items()}

    def rate(dl):
        it = iter(dl)
        next(it)  # warm-up batch (worker start-up, first file reads)
        t = time.perf_counter(); n = 0
        for _ in range(a.batches):
            b = next(it); n += b[0].shape[0]
        return n / (time.perf_counter() - t)

    set_seed(0)
    rates = {k: [] for k in dls}
    for r in range(a.repeats):
        for k, d in dls.items(): rates[k].append(rate(d.train))
    base = statistics.median(rates['fastai DataBlock (image + mask)'])
    rows = [dict(pipeline=k, images_per_s=round(statistics.median(v), 1), ratio_to_fastai=round(statistics.median(v)/base, 3),
                 runs=[round(x, 1) for x in v]) for k, v in rates.items()]
    meta = dict(size=a.size, bs=a.bs, batches=a.batches, repeats=a.repeats, workers=a.workers, n_images=len(df),
                cpus=os.cpu_count(), machine=platform.machine(), python=platform.python_version(), torch=torch.__version__)
    w = max(len(r['pipeline']) for r in rows)
    print(f"\nData throughput at {a.size}px, bs {a.bs}, {a.workers} workers, {a.batches} batches x {a.repeats} repeats (median)")
    print(f"{'pipeline':<{w}}  images/s  ratio to fastai")
    for r in rows: print(f"{r['pipeline']:<{w}}  {r['images_per_s']:8.1f}  {r['ratio_to_fastai']:.3f}")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out/'data_throughput.json').write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"\nwritten to {a.out/'data_throughput.json'}")

if __name__ == '__main__': main()
