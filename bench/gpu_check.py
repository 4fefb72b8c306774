#!/usr/bin/env python
"""The GPU path, checked on a CUDA machine: mixed precision (fp16 with its loss scaler, bf16), channels_last, hard
sharing and cross-stitch models with missing targets of every kind, and images/s of the cached data path against
fastai's DataBlock with the augmentation on the GPU.

For every combination of architecture (`hard`, `cross_stitch`), precision (`fp32`, `fp16`, `bf16`) and memory format
(contiguous, channels_last) it trains for `--epochs` on data where every target is missing on part of the images, with
`TrainingGuard` on (a non-finite loss or gradient stops the run), and reports: images/s, peak CUDA memory, the final
per-task validation metrics, whether every parameter is finite, fp16's loss scale at the end and the number of steps
the scaler skipped. Then it times one epoch of loading + collating + GPU augmentation for the cached path and for
fastai's DataBlock. Results: bench/results/gpu_check.json and .md.

    python bench/gpu_check.py [--data PATH] [--size 160] [--bs 64] [--epochs 2] [--arch resnet34]
    python bench/gpu_check.py --smoke      # a tiny run that also works on a CPU (fp32 only): checks the script itself

On a machine without CUDA (and without --smoke) it says so and exits with status 2: nothing is measured.
"""
import argparse, json, math, os, platform, shutil, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, DEFAULT_DATA, DATA_HELP  # noqa: E402

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=Path, default=DEFAULT_DATA, help=DATA_HELP + '; synthetic shapes when absent')
    p.add_argument('--size', type=int, default=160)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--arch', default='resnet34', help='a torchvision model name (random weights: nothing is downloaded)')
    p.add_argument('--smoke', action='store_true', help='tiny sizes, fp32 only; runs on CPU too (checks the script)')
    p.add_argument('--out', type=Path, default=ROOT/'bench'/'results')
    return p.parse_args(argv)

def make_data(a, tmp):
    "`(path, df, tasks)`: the pets subset when present (trimaps, breeds, head boxes: all partly missing), else synthetic shapes"
    from fastai_mtl.all import (SegmentationTask, ClassificationTask, BoxTask, TRIMAP_CODES, TRIMAP_CODE_MAP, pets_df,
                                synth_shapes, drop_targets, SHAPE_CODES, BOX_COLS)
    if (a.data/'images').is_dir() and not a.smoke:
        df = pets_df(a.data)
        df.loc[df.sample(frac=0.5, random_state=0).index, 'trimap'] = None     # half the trimaps missing
        df.loc[df.sample(frac=0.3, random_state=1).index, 'breed'] = None      # a third of the breeds
        return a.data, df, 'is_test', [SegmentationTask('trimap', TRIMAP_CODES, code_map=TRIMAP_CODE_MAP),
                                       ClassificationTask('breed'), BoxTask(name='head')]
    path, df = synth_shapes(96 if a.smoke else 2000, size=max(a.size, 32), seed=0,
                            missing={'mask': 0.5, 'shape': 0.3, 'box': 0.3})
    return path, df, 'is_valid', [SegmentationTask('mask', SHAPE_CODES), ClassificationTask('shape'), BoxTask(cols=BOX_COLS)]

class StepStats:
    "A fastai callback: fp16's loss scale after each step and the steps the scaler skipped"
    def __new__(cls):
        from fastai.vision.all import Callback
        class _S(Callback):
            order = 11   # after MixedPrecision
            def before_fit(self): self.scales, self.skipped, self.n_img = [], 0, 0
            def after_batch(self):
                if self.training: self.n_img += self.xb[0].shape[0]
            def after_step(self):
                s = getattr(self.learn, 'scaler', None)
                if s is not None and s.is_enabled(): self.scales.append(float(s.get_scale()))
            def after_cancel_step(self): self.skipped += 1
        return _S()

def main(argv=None):
    a = parse(argv)
    import torch
    cuda = torch.cuda.is_available()
    if not cuda and not a.smoke:
        print('no CUDA device: nothing to measure (use --smoke to check the script on a CPU)'); sys.exit(2)
    if a.smoke: a.size, a.bs, a.epochs, a.arch = 32, 8, 1, 'resnet18'
    from fastai.vision.all import (aug_transforms, Normalize, imagenet_stats, DataBlock, ImageBlock, MaskBlock, ColReader,
                                   ColSplitter, Resize, set_seed)
    import torchvision
    from fastai_mtl.all import MTLDataLoaders, mtl_learner
    arch = getattr(torchvision.models, a.arch)
    tmp = Path(tempfile.mkdtemp(prefix='fastai_mtl_gpu_'))
    rows, loader_rows = [], []
    try:
        path, df, valid_col, tasks = make_data(a, tmp)
        batch = [*aug_transforms(), Normalize.from_stats(*imagenet_stats)]
        dls = MTLDataLoaders.from_df(df, path, tasks=tasks, valid_col=valid_col, size=a.size, bs=a.bs,
                                     batch_tfms=batch, cache=tmp/'cache')
        precisions = ['fp32'] if not cuda else ['fp32', 'fp16', 'bf16']
        for architecture in ('hard', 'cross_stitch'):
            for prec in precisions:
                for cl in (False, True):
                    set_seed(0)
                    learn = mtl_learner(dls, arch, pretrained=False, architecture=architecture, guard=True, cbs=StepStats())
                    if prec == 'fp16': learn.to_fp16()
                    if prec == 'bf16': learn.to_bf16()
                    if cl: learn.model = learn.model.to(memory_format=torch.channels_last)
                    if cuda: torch.cuda.reset_peak_memory_stats()
                    err, t = None, time.perf_counter()
                    try:
                        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(a.epochs, 1e-3)
                    except Exception as e: err = f'{type(e).__name__}: {e}'
                    if cuda: torch.cuda.synchronize()
                    wall = time.perf_counter() - t
                    st = learn.step_stats if hasattr(learn, 'step_stats') else learn.cbs.filter(lambda c: hasattr(c, 'scales'))[0]
                    names = learn.recorder.metric_names[1:-1]
                    vals = learn.recorder.values[-1] if learn.recorder.values else []
                    r = dict(architecture=architecture, precision=prec, channels_last=cl, error=err,
                             train_images_per_s=round(st.n_img / wall, 1) if not err else None,
                             cuda_peak_mb=round(torch.cuda.max_memory_allocated()/2**20) if cuda else None,
                             params_finite=all(torch.isfinite(p).all().item() for p in learn.model.parameters()),
                             final_scale=st.scales[-1] if st.scales else None, skipped_steps=st.skipped, steps=len(st.scales) or None,
                             metrics={n: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)) for n, v in zip(names, vals)})
                    rows.append(r)
                    print(json.dumps(r), flush=True)
        # loading + collating + augmentation (on the GPU when there is one): cached path against fastai's DataBlock
        dev = 'cuda' if cuda else 'cpu'
        seg = tasks[0]
        def fastai_dls():
            return DataBlock(blocks=(ImageBlock, MaskBlock(seg.codes)), get_x=ColReader('fn', pref=path),
                             get_y=ColReader(seg.cols[0], pref=path), splitter=ColSplitter(valid_col),
                             item_tfms=Resize(a.size, method='squish'), batch_tfms=batch).dataloaders(
                                 df[df[seg.cols[0]].notna()], bs=a.bs, device=dev)
        cached = MTLDataLoaders.from_df(df, path, tasks=tasks, valid_col=valid_col, size=a.size, bs=a.bs, batch_tfms=batch,
                                        cache=tmp/'cache', device=dev)
        for name, d in (('fastai DataBlock (image + mask, masked rows)', fastai_dls()), ('fastai_mtl cached (all targets)', cached)):
            for _ in d.train: pass                                   # warm-up
            t, n = time.perf_counter(), 0
            for b in d.train: n += b[0].shape[0]
            if cuda: torch.cuda.synchronize()
            loader_rows.append(dict(pipeline=name, images_per_s=round(n/(time.perf_counter()-t), 1)))
            print(json.dumps(loader_rows[-1]), flush=True)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    meta = dict(device=torch.cuda.get_device_name() if cuda else 'cpu (smoke)', torch=torch.__version__,
                cuda=torch.version.cuda, arch=a.arch, size=a.size, bs=a.bs, epochs=a.epochs, data=str(path.name),
                python=platform.python_version(), smoke=a.smoke)
    md = [f"GPU check on {meta['device']} (torch {meta['torch']}, CUDA {meta['cuda']}): {a.arch} from scratch, {a.size} px, "
          f"bs {a.bs}, {a.epochs} epoch(s) of fit_one_cycle, targets partly missing, TrainingGuard on.", '',
          '| architecture | precision | channels_last | images/s | peak CUDA MB | finite | fp16 scale | skipped steps | error |',
          '| --- | --- | --- | ---: | ---: | --- | ---: | ---: | --- |']
    md += [f"| {r['architecture']} | {r['precision']} | {r['channels_last']} | {r['train_images_per_s']} | {r['cuda_peak_mb']} | "
           f"{r['params_finite']} | {r['final_scale']} | {r['skipped_steps']} | {r['error'] or ''} |" for r in rows]
    md += ['', '| data pipeline (one epoch, augmentation on the device) | images/s |', '| --- | ---: |']
    md += [f"| {r['pipeline']} | {r['images_per_s']} |" for r in loader_rows]
    md = '\n'.join(md)
    print('\n' + md)
    name = 'gpu_check_smoke' if a.smoke else 'gpu_check'
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out/f'{name}.json').write_text(json.dumps(dict(meta=meta, rows=rows, loaders=loader_rows), indent=1))
    (a.out/f'{name}.md').write_text(md + '\n')
    print(f'written to {a.out/name}.json and .md')
    bad = [r for r in rows if r['error'] or not r['params_finite']]
    if bad: sys.exit(f'{len(bad)} configuration(s) failed')

if __name__ == '__main__': main()
