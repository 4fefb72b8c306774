#!/usr/bin/env python
"""Seconds per training step and peak memory of `mtl_learner`, against a hand-written PyTorch loop training the same
model, and against one single-task fastai learner per task.

The three tasks of the pets tutorial (trimap segmentation, breed, head box) at 128 px, bs 16, on the Oxford-IIIT Pet
subset (synthetic shapes with `--synth`). Every configuration trains on the same batches: drawn once from the
`MTLDataLoaders` (augmented, normalised), saved, and replayed from memory, so that data loading is out of the
comparison; the `*+loading` rows instead draw fresh batches from the DataLoader at every step, on both sides.

Configurations (all from the same initial weights, `--arch` body, full U-Net decoder for the trimap):
- `mtl_learner (fastai Adam)`: `learn.fit`, the library as a user runs it (fastai's own `Adam`, callbacks, recorder,
  `MaskedMultiLoss`);
- `mtl_learner (torch AdamW)`: the same with `opt_func=partial(OptimWrapper, opt=torch.optim.AdamW)`: the same
  optimiser as the hand-written loop, so the difference is the library alone;
- `hand-written loop`: `learn.model` trained by a plain PyTorch loop: plain tensors, the three losses written out
  (cross-entropy ignoring 255 / -1, torchvision's DIoU loss on the labelled boxes), `torch.optim.AdamW` with fastai's
  defaults (lr 1e-3, betas (0.9, 0.99), eps 1e-5, weight decay 0.01);
- `hand-written loop + MaskedMultiLoss`: the same loop with the library's loss (what the loss costs);
- `single-task: unet_learner / vision_learner / vision_learner (box)`: fastai's own learners, one model per task
  (same body; the box learner regresses 4 numbers in [-1, 1] with the DIoU loss), each trained on the same images.

Each configuration runs in its own subprocess (peak memory: RSS high-water mark from `getrusage`, and on CUDA
`torch.cuda.max_memory_allocated`), interleaved over `--repeats` rounds in rotating order; the table reports medians
of the per-step wall time and per-step CPU time (all threads; less sensitive to other processes on a shared machine).

    python bench/overhead.py [--arch resnet18] [--size 128] [--bs 16] [--steps 12] [--warmup 3] [--repeats 3]
                             [--threads N] [--synth] [--no-loading] [--profile]
"""
import argparse, json, os, platform, statistics, subprocess, sys, tempfile, time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, DEFAULT_DATA, DATA_HELP, rss_mb, peak_rss_mb  # noqa: E402

CONFIGS = {  # key: (label, group)
    'mtl': ('mtl_learner (fastai Adam)', 'mtl'),
    'mtl_adamw': ('mtl_learner (torch AdamW)', 'mtl'),
    'hand': ('hand-written loop', 'mtl'),
    'hand_mml': ('hand-written loop + MaskedMultiLoss', 'mtl'),
    'seg': ('single-task unet_learner (trimap)', 'single'),
    'cls': ('single-task vision_learner (breed)', 'single'),
    'box': ('single-task vision_learner (head box)', 'single'),
    'mtl_load': ('mtl_learner (fastai Adam) +loading', 'loading'),
    'hand_load': ('hand-written loop +loading', 'loading'),
}

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arch', default='resnet18', help='torchvision resnet name')
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--bs', type=int, default=16)
    p.add_argument('--steps', type=int, default=12, help='timed training steps per run')
    p.add_argument('--warmup', type=int, default=3, help='untimed steps first')
    p.add_argument('--n-batches', type=int, default=6, help='distinct preloaded batches, replayed in turn')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=os.cpu_count(), help='torch CPU threads')
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--synth', action='store_true', help='synthetic shapes instead of the pets subset')
    p.add_argument('--data', type=Path, default=DEFAULT_DATA, help=DATA_HELP)
    p.add_argument('--no-loading', action='store_true', help='leave out the +loading rows')
    p.add_argument('--configs', nargs='*', default=None, help=f'subset of {list(CONFIGS)}')
    p.add_argument('--profile', action='store_true', help='print where the time of a library step and a hand step goes')
    p.add_argument('--out', type=Path, default=ROOT/'bench'/'results')
    p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    p.add_argument('--batches-file', type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)

# ---------------------------------------------------------------------------------------------------------------
# Data (in the parent and in every worker: the same DataLoaders, so the same vocab and model sizes)
def make_dls(a):
    from fastai.vision.all import Resize, aug_transforms, set_seed
    from fastai_mtl.all import (MTLDataLoaders, SegmentationTask, ClassificationTask, BoxTask, pets_df, TRIMAP_CODES,
                                TRIMAP_CODE_MAP, synth_shapes, SHAPE_CODES)
    set_seed(0)
    if a.synth:
        path, df = synth_shapes(600, size=a.size, seed=0, missing={'mask': 0.3, 'box': 0.5})
        tasks = [SegmentationTask('mask', SHAPE_CODES), ClassificationTask('shape'), BoxTask()]
        valid = 'is_valid'
    else:
        if not (a.data/'images').is_dir(): sys.exit(f'no Oxford-IIIT Pet layout at {a.data} (pass --data, or --synth)')
        path, df = a.data, pets_df(a.data)
        tasks = [SegmentationTask('trimap', TRIMAP_CODES, code_map=TRIMAP_CODE_MAP), ClassificationTask('breed'),
                 BoxTask(name='head')]
        valid = 'is_test'
    return MTLDataLoaders.from_df(df, path, 'fn', tasks, valid_col=valid, item_tfms=Resize(a.size, method='squish'),
                                  batch_tfms=aug_transforms(), bs=a.bs, num_workers=0)

def preload(a, fn):
    "Draw `n_batches` training batches once and save them"
    import torch
    dls = make_dls(a)
    it = iter(dls.train)
    batches = [next(it) for _ in range(a.n_batches)]
    torch.save(batches, fn)

# ---------------------------------------------------------------------------------------------------------------
# Worker: one configuration, timed
class Cycle:
    "A DataLoader stand-in replaying `batches` for `n` steps"
    def __init__(self, batches, n): self.batches, self.n = batches, n
    def __len__(self): return self.n
    def __iter__(self): return (self.batches[i % len(self.batches)] for i in range(self.n))

class Timer:
    "Wall and CPU time stamps at the start of each step, and at the end of the last"
    def __init__(self): self.wall, self.cpu = [], []
    def tick(self):
        import torch
        if torch.cuda.is_available(): torch.cuda.synchronize()
        self.wall.append(time.perf_counter()); self.cpu.append(time.process_time())
    def per_step(self, warmup):
        w, c = self.wall[warmup:], self.cpu[warmup:]
        return [b - a for a, b in zip(w, w[1:])], [b - a for a, b in zip(c, c[1:])]

def hand_losses(preds, m, y, b):
    "The three tasks' losses written out in PyTorch: mean over labelled pixels / labels / boxes, summed"
    import torch, torch.nn.functional as F
    from torchvision.ops import distance_box_iou_loss
    seg, cls, box = preds
    loss = F.cross_entropy(seg, m, ignore_index=255) if (m != 255).any() else seg.sum()*0
    loss = loss + (F.cross_entropy(cls, y, ignore_index=-1) if (y != -1).any() else cls.sum()*0)
    b = b.view(-1, 4); lab = ~b.isnan().any(1)
    return loss + (distance_box_iou_loss(box[lab].float(), b[lab], reduction='mean') if lab.any() else box.sum()*0)

def box_loss(pred, targ):
    "Single-task box learner's loss: DIoU over the labelled boxes (predictions `(bs, 4)` in [-1, 1])"
    import torch
    from torchvision.ops import distance_box_iou_loss
    t = targ.view(-1, 4); lab = ~t.isnan().any(1)
    p = pred.float()
    p = torch.cat([torch.minimum(p[:, :2], p[:, 2:]), torch.maximum(p[:, :2], p[:, 2:])], 1)
    return distance_box_iou_loss(p[lab], t[lab].float(), reduction='mean') if lab.any() else pred.sum()*0

def worker(a):
    import torch
    torch.set_num_threads(a.threads)
    from torch import nn
    from fastai.vision.all import (set_seed, unet_learner, vision_learner, OptimWrapper, Callback, CancelValidException, CancelTrainException,
                                   CrossEntropyLossFlat, default_device, to_device, models)
    from fastai_mtl.all import mtl_learner, MaskedMultiLoss
    rss0 = rss_mb()
    if torch.cuda.is_available(): torch.cuda.reset_peak_memory_stats()
    cfg = a.worker
    arch = getattr(models, a.arch)
    dls = make_dls(a)
    dev = default_device()
    batches = to_device(torch.load(a.batches_file, weights_only=False), dev)
    n = a.warmup + a.steps
    set_seed(1)
    timer = Timer()

    class TimeSteps(Callback):
        "Time stamps at each training step; `n` steps at most; no validation"
        order = -100
        def before_batch(self):
            if self.training: timer.tick()
        def after_batch(self):
            if self.training and self.iter + 1 >= n: raise CancelTrainException()
        def after_train(self): timer.tick()
        def before_validate(self): raise CancelValidException()

    class Replay(Callback):
        "Train on the preloaded batches (`tfm` of each: a single-task learner's part of it)"
        def __init__(self, tfm=None): self.tfm = tfm
        def before_train(self): self.learn.dl = Cycle(batches if self.tfm is None else [self.tfm(b) for b in batches], n)

    def fit(learn, cbs):
        learn.fit(1, a.lr, cbs=[TimeSteps(), *cbs])
        return learn

    kw = dict(pretrained=False)
    if cfg in ('mtl', 'mtl_adamw', 'mtl_load'):
        opt = dict(opt_func=partial(OptimWrapper, opt=torch.optim.AdamW)) if cfg == 'mtl_adamw' else {}
        learn = mtl_learner(dls, arch, **kw, **opt)
        with learn.no_bar(), learn.no_logging(): fit(learn, [] if cfg == 'mtl_load' else [Replay()])
    elif cfg in ('hand', 'hand_mml', 'hand_load'):
        learn = mtl_learner(dls, arch, **kw)
        model = learn.model.to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)
        loss_fn = MaskedMultiLoss(dls.tasks) if cfg == 'hand_mml' else hand_losses
        plain = lambda t: t.as_subclass(torch.Tensor)
        src = iter(dls.train) if cfg == 'hand_load' else Cycle(batches, n)
        for i, b in enumerate(src):
            if cfg == 'hand_load' and i == n: break
            timer.tick()
            x, m, y, bx = [plain(t) for t in b]
            loss = loss_fn(model(x), m, y, bx)
            opt.zero_grad(); loss.backward(); opt.step()
        timer.tick()
    elif cfg == 'seg':
        learn = unet_learner(dls, arch, n_out=len(dls.tasks[0].codes), loss_func=CrossEntropyLossFlat(axis=1, ignore_index=255), **kw)
        with learn.no_bar(), learn.no_logging(): fit(learn, [Replay(lambda b: (b[0], b[1]))])
    elif cfg == 'cls':
        learn = vision_learner(dls, arch, n_out=len(dls.tasks[1].vocab), loss_func=CrossEntropyLossFlat(ignore_index=-1), **kw)
        with learn.no_bar(), learn.no_logging(): fit(learn, [Replay(lambda b: (b[0], b[2]))])
    elif cfg == 'box':
        learn = vision_learner(dls, arch, n_out=4, y_range=(-1, 1), loss_func=box_loss, **kw)
        with learn.no_bar(), learn.no_logging(): fit(learn, [Replay(lambda b: (b[0], b[3].view(-1, 4)))])
    else: raise ValueError(cfg)
    wall, cpu = timer.per_step(a.warmup)
    res = dict(config=cfg, wall=wall, cpu=cpu, rss0_mb=rss0, peak_rss_mb=peak_rss_mb(),
               n_params=sum(p.numel() for p in learn.model.parameters()))
    if torch.cuda.is_available(): res['cuda_peak_mb'] = torch.cuda.max_memory_allocated()/2**20
    print('RESULT ' + json.dumps(res), flush=True)

def profile(a):
    "Where the time goes: torch's profiler over a few library steps and a few hand-written steps, by top-level op"
    import torch
    torch.set_num_threads(a.threads)
    from torch.profiler import profile as tprof, ProfilerActivity
    sys.argv = sys.argv[:1]
    for cfg in ('mtl', 'hand'):
        a.worker = cfg
        with tprof(activities=[ProfilerActivity.CPU]) as prof: worker(a)
        print(f'\n== {CONFIGS[cfg][0]}: top operations by self CPU time')
        print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=25))

# ---------------------------------------------------------------------------------------------------------------
# Parent: interleaved runs, table
def run_worker(a, cfg, fn):
    args = [sys.executable, __file__, '--worker', cfg, '--batches-file', str(fn), '--arch', a.arch, '--size', str(a.size),
            '--bs', str(a.bs), '--steps', str(a.steps), '--warmup', str(a.warmup), '--threads', str(a.threads),
            '--lr', str(a.lr), '--data', str(a.data)] + (['--synth'] if a.synth else [])
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    for line in out.stdout.splitlines():
        if line.startswith('RESULT '): return json.loads(line[7:])
    raise RuntimeError(f'{cfg} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}')

def med(xs): return statistics.median(xs)

def main():
    a = parse()
    if a.worker: return worker(a)
    if a.profile:
        with tempfile.TemporaryDirectory() as d:
            a.batches_file = Path(d)/'batches.pt'; preload(a, a.batches_file); return profile(a)
    cfgs = a.configs or [c for c in CONFIGS if not (a.no_loading and CONFIGS[c][1] == 'loading')]
    runs = {c: [] for c in cfgs}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        fn = Path(d)/'batches.pt'
        preload(a, fn)
        for r in range(a.repeats):
            order = cfgs[r % len(cfgs):] + cfgs[:r % len(cfgs)]   # rotate, so no configuration always runs first
            for c in order:
                res = run_worker(a, c, fn)
                runs[c].append(res)
                print(f'repeat {r+1}/{a.repeats} {CONFIGS[c][0]:<42} {med(res["wall"]):.3f} s/step wall, '
                      f'{med(res["cpu"]):.3f} s/step CPU, peak RSS {res["peak_rss_mb"]:.0f} MB', flush=True)
    import torch
    rows = {}
    for c, rs in runs.items():
        rows[c] = dict(config=CONFIGS[c][0], wall_s=med([med(r['wall']) for r in rs]), cpu_s=med([med(r['cpu']) for r in rs]),
                       peak_rss_mb=med([r['peak_rss_mb'] for r in rs]),
                       train_mem_mb=med([r['peak_rss_mb'] - r['rss0_mb'] for r in rs]),
                       n_params=rs[0]['n_params'], wall_runs=[round(med(r['wall']), 4) for r in rs])
        if 'cuda_peak_mb' in rs[0]: rows[c]['cuda_peak_mb'] = med([r['cuda_peak_mb'] for r in rs])
    ratios = {}
    if 'hand' in rows:
        h = rows['hand']
        for c in ('mtl', 'mtl_adamw', 'hand_mml'):
            if c in rows: ratios[f'{CONFIGS[c][0]} / hand-written loop'] = {k: rows[c][k]/h[k] for k in ('wall_s', 'cpu_s', 'train_mem_mb')}
    if 'mtl_load' in rows and 'hand_load' in rows:
        ratios['mtl_learner +loading / hand-written loop +loading'] = {k: rows['mtl_load'][k]/rows['hand_load'][k] for k in ('wall_s', 'cpu_s', 'train_mem_mb')}
    single = [c for c in ('seg', 'cls', 'box') if c in rows]
    if single and 'mtl' in rows:
        tot = {k: sum(rows[c][k] for c in single) for k in ('wall_s', 'cpu_s', 'train_mem_mb')}
        rows['single_sum'] = dict(config=f'single-task learners, sum of {len(single)}', **tot,
                                  n_params=sum(rows[c]['n_params'] for c in single))
        ratios[f'single-task sum / mtl_learner'] = {k: tot[k]/rows['mtl'][k] for k in tot}
        ratios[f'largest single-task / mtl_learner (memory, trained one after the other)'] = {
            'train_mem_mb': max(rows[c]['train_mem_mb'] for c in single)/rows['mtl']['train_mem_mb']}
    meta = dict(data='synthetic shapes' if a.synth else str(a.data.name), arch=a.arch, size=a.size, bs=a.bs, steps=a.steps,
                warmup=a.warmup, n_batches=a.n_batches, repeats=a.repeats, threads=a.threads, lr=a.lr,
                cpus=os.cpu_count(), device='cuda' if torch.cuda.is_available() else 'cpu',
                machine=platform.machine(), python=platform.python_version(), torch=torch.__version__,
                load_avg_1min_at_end=os.getloadavg()[0], total_s=round(time.time() - t0))
    md = table(rows, ratios, meta)
    print('\n' + md)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out/'overhead.json').write_text(json.dumps(dict(meta=meta, rows=list(rows.values()), ratios=ratios), indent=1))
    (a.out/'overhead.md').write_text(md + '\n')
    print(f"written to {a.out/'overhead.json'} and {a.out/'overhead.md'}")

def table(rows, ratios, meta):
    mem_col = 'cuda_peak_mb' if meta['device'] == 'cuda' else 'train_mem_mb'
    l = [f"Training step cost, {meta['arch']} body, {meta['size']} px, bs {meta['bs']}, {meta['data']}, {meta['device']} "
         f"({meta['threads']} threads), {meta['steps']} steps x {meta['repeats']} repeats, medians",
         '', '| configuration | s/step (wall) | s/step (CPU) | peak RSS (MB) | training memory (MB) | parameters |',
         '| --- | ---: | ---: | ---: | ---: | ---: |']
    for r in rows.values():
        l.append(f"| {r['config']} | {r['wall_s']:.3f} | {r['cpu_s']:.3f} | {r.get('peak_rss_mb', float('nan')):.0f} | "
                 f"{r['train_mem_mb']:.0f} | {r['n_params']/1e6:.1f} M |")
    l += ['', '| ratio | wall time | CPU time | training memory |', '| --- | ---: | ---: | ---: |']
    for k, v in ratios.items():
        f = lambda x: f'{v[x]:.3f}' if x in v else ''
        l.append(f"| {k} | {f('wall_s')} | {f('cpu_s')} | {f('train_mem_mb')} |")
    l += ['', '"training memory": peak RSS minus RSS after imports (model, optimiser state, activations, batches).',
          f"Load average at the end: {meta['load_avg_1min_at_end']:.1f} on {meta['cpus']} CPUs; total {meta['total_s']} s."]
    return '\n'.join(l)

if __name__ == '__main__': main()
