#!/usr/bin/env python
"""Images per second through loading and collating, fastai_mtl (decoding every epoch, and cached) against fastai's
own segmentation DataBlock on the same files; and the chunked stores a cache could use (memory-mapped .npy, HDF5,
zarr) read side by side.

What is timed is what the CPU must do per epoch when augmentation runs on the GPU: build every item and collate the
batches; and again with fastai's `aug_transforms()` on the CPU, as on a machine without a GPU (`--no-aug` skips it). Every training image of
the pets subset is read once per pass, at 128 px, batch size 32, with 0, 1 and 2 worker processes. The pipelines are
interleaved (A, B, C, A, B, C, ...) so that machine noise hits them alike; the table reports medians and ratios to
fastai's DataBlock with the same workers.

    python bench/data_throughput.py [--data PATH] [--size 128] [--bs 32] [--repeats 3] [--workers 0 1 2]
"""
import argparse, json, os, platform, shutil, statistics, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, DEFAULT_DATA, DATA_HELP, check_data  # noqa: E402

FASTAI = 'fastai DataBlock (image + mask)'

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=Path, default=DEFAULT_DATA, help=DATA_HELP)
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--repeats', type=int, default=3, help='passes over the training set per pipeline (interleaved)')
    p.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2], help='DataLoader worker processes to try')
    p.add_argument('--no-aug', dest='aug', action='store_false', help="skip the runs with fastai's aug_transforms() on the CPU")
    p.add_argument('--quick', action='store_true', help='one repeat, 0 workers, no store comparison (a smoke test)')
    p.add_argument('--out', type=Path, default=ROOT/'bench'/'results')
    return p.parse_args(argv)

def epoch_rate(dl) -> float:
    "Images per second of one pass over `dl` (worker start-up included, as a user's epoch pays it)"
    t, n = time.perf_counter(), 0
    for b in dl: n += b[0].shape[0]
    return n / (time.perf_counter() - t)

def store_rates(arrays:list, tmp:Path, bs:int, repeats:int) -> list:
    "Items/s reading random batches of `arrays` (one per element, `(n, ...)`) from each chunked store, stacked into batches"
    import numpy as np, h5py, zarr
    n = len(arrays[0])
    # memory-mapped .npy (what fastai_mtl's cache uses)
    for k, a in enumerate(arrays): np.save(tmp/f'{k}.npy', a)
    # HDF5, as the seed paper: one chunk per item, no compression
    with h5py.File(tmp/'items.h5', 'w') as f:
        for k, a in enumerate(arrays): f.create_dataset(str(k), data=a, chunks=(1, *a.shape[1:]))
    # zarr: one chunk per item, no compression
    z = zarr.open_group(str(tmp/'items.zarr'), mode='w')
    for k, a in enumerate(arrays):
        d = z.create_array(str(k), shape=a.shape, dtype=a.dtype, chunks=(1, *a.shape[1:]), compressors=None) \
            if hasattr(z, 'create_array') else z.create_dataset(str(k), shape=a.shape, dtype=a.dtype, chunks=(1, *a.shape[1:]), compressor=None)
        d[:] = a
    def npy(): return [np.load(tmp/f'{k}.npy', mmap_mode='r') for k in range(len(arrays))]
    def h5():
        f = h5py.File(tmp/'items.h5', 'r'); return [f[str(k)] for k in range(len(arrays))]
    def zr():
        g = zarr.open_group(str(tmp/'items.zarr'), mode='r'); return [g[str(k)] for k in range(len(arrays))]
    stores = {'memory-mapped .npy': npy, 'HDF5 (h5py, a chunk per item)': h5, 'zarr (a chunk per item)': zr}
    rng = np.random.default_rng(0)
    rates = {k: [] for k in stores}
    for _ in range(repeats):
        for name, opener in stores.items():
            src, order = opener(), rng.permutation(n)
            t = time.perf_counter()
            for i in range(0, n - bs + 1, bs):
                idx = order[i:i+bs]
                [np.stack([np.asarray(s[j]) for j in idx]) for s in src]   # item by item, as a Dataset reads them
            rates[name].append((n - n % bs) / (time.perf_counter() - t))
    return [dict(store=k, items_per_s=round(statistics.median(v), 1), runs=[round(x, 1) for x in v]) for k, v in rates.items()]

def main(argv=None):
    a = parse(argv)
    check_data(a.data)
    if a.quick: a.repeats, a.workers, a.aug = 1, [0], False
    from fastai.vision.all import (DataBlock, ImageBlock, MaskBlock, ColReader, ColSplitter, Resize, aug_transforms,
                                   set_seed, torch)
    from fastai_mtl.all import (MTLDataLoaders, SegmentationTask, ClassificationTask, BoxTask, pets_df, TRIMAP_CODES,
                                TRIMAP_CODE_MAP)
    torch.set_num_threads(1)    # the loading work, not intra-op threads, is what is measured
    df = pets_df(a.data)
    item = Resize(a.size, method='squish')
    tmp = Path(tempfile.mkdtemp(prefix='fastai_mtl_bench_'))
    try:
        def fastai_seg(w, batch):
            db = DataBlock(blocks=(ImageBlock, MaskBlock(['pet', 'background', 'border'])),
                           get_x=ColReader('fn', pref=a.data), get_y=ColReader('trimap', pref=a.data),
                           splitter=ColSplitter('is_test'), item_tfms=item, batch_tfms=batch)
            return db.dataloaders(df, bs=a.bs, num_workers=w, device='cpu')
        seg = lambda: [SegmentationTask('trimap', TRIMAP_CODES, code_map=TRIMAP_CODE_MAP)]
        three = lambda: seg() + [ClassificationTask('breed'), BoxTask(name='head')]
        def mtl(tasks, cache=None):
            def make(w, batch):
                return MTLDataLoaders.from_df(df, a.data, 'fn', tasks(), valid_col='is_test', item_tfms=item, batch_tfms=batch,
                                              bs=a.bs, num_workers=w, device='cpu', cache=cache)
            return make
        t0 = time.perf_counter()
        mtl(three, tmp/'cache')(0, None)
        build_s = time.perf_counter() - t0
        pipelines = {FASTAI: fastai_seg, 'fastai_mtl (image + mask)': mtl(seg),
                     'fastai_mtl (image + mask + breed + box)': mtl(three),
                     'fastai_mtl cached (image + mask + breed + box)': mtl(three, tmp/'cache')}
        rows = []
        for aug in ([False, True] if a.aug else [False]):
            batch = aug_transforms() if aug else None
            for w in a.workers:
                dls = {k: f(w, batch) for k, f in pipelines.items()}
                for d in dls.values(): epoch_rate(d.train)       # warm-up: file cache, lazy imports
                set_seed(0)
                rates = {k: [] for k in dls}
                for _ in range(a.repeats):
                    for k, d in dls.items(): rates[k].append(epoch_rate(d.train))
                base = statistics.median(rates[FASTAI])
                for k, v in rates.items():
                    rows.append(dict(pipeline=k, workers=w, cpu_aug=aug, images_per_s=round(statistics.median(v), 1),
                                     ratio_to_fastai=round(statistics.median(v)/base, 2), runs=[round(x, 1) for x in v]))
                    print(f"{'aug' if aug else 'no aug'} {w} workers  {k:<48} {rows[-1]['images_per_s']:8.1f} images/s  "
                          f"x{rows[-1]['ratio_to_fastai']:.2f}", flush=True)
        stores = []
        if not a.quick:
            d = mtl(three, tmp/'cache')(0, None)
            import numpy as np
            arrays = [np.asarray(x) for x in d.train.cache.arrays]
            stores = store_rates(arrays, tmp/'stores', a.bs, a.repeats) if (tmp/'stores').mkdir() is None else []
    finally: shutil.rmtree(tmp, ignore_errors=True)
    meta = dict(data=a.data.name, size=a.size, bs=a.bs, repeats=a.repeats, n_train=int((~df.is_test).sum()),
                cache_build_s=round(build_s, 1), torch_threads=1, cpus=os.cpu_count(), machine=platform.machine(),
                python=platform.python_version(), torch=torch.__version__, quick=a.quick,
                timed='one pass over the training set per measurement (worker start-up included), median over repeats')
    md = [f"Loading + collating the {meta['n_train']} training images of {a.data.name} at {a.size} px, bs {a.bs}, "
          f"{a.repeats} passes per pipeline, interleaved (median); {os.cpu_count()} CPUs, 1 torch thread. Building the cache "
          f"(once, 0 workers, training + validation items): {build_s:.1f} s.", '',
          '| pipeline | workers | CPU augmentation | images/s | ratio to fastai |', '| --- | --- | --- | --- | --- |']
    md += [f"| {r['pipeline']} | {r['workers']} | {'aug_transforms()' if r['cpu_aug'] else 'none'} | {r['images_per_s']:.0f} | "
           f"{r['ratio_to_fastai']:.2f}x |" for r in rows]
    if stores:
        md += ['', f'Reading the same cached arrays (image, trimap, breed, box) in random batches of {a.bs} from each store '
               '(items/s, median):', '', '| store | items/s |', '| --- | --- |']
        md += [f"| {s['store']} | {s['items_per_s']:.0f} |" for s in stores]
    md = '\n'.join(md)
    print('\n' + md)
    a.out.mkdir(parents=True, exist_ok=True)
    name = 'data_throughput_quick' if a.quick else 'data_throughput'
    (a.out/f'{name}.json').write_text(json.dumps(dict(meta=meta, rows=rows, stores=stores), indent=1))
    (a.out/f'{name}.md').write_text(md + '\n')
    print(f"\nwritten to {a.out/name}.json and .md")

if __name__ == '__main__': main()
