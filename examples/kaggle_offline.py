#!/usr/bin/env python
"""fastai_mtl in a Kaggle notebook with the internet off: install from an attached wheel, load backbone weights from an
attached dataset, train with mixed precision on the GPU, export, and write a submission.

On Kaggle, attach two datasets: one holding the fastai_mtl wheel (`pip wheel --no-deps . -w wheels` on a machine with
the internet, or the release wheel), one holding the backbone's weights (a torchvision or timm state dict saved with
`torch.save(model.state_dict(), 'resnet34.pth')`). fastai, torch and timm are preinstalled in Kaggle's image. Then, in a
notebook cell (one GPU; for two, see the docs page "On Kaggle, offline"):

    !python kaggle_offline.py --wheels /kaggle/input/fastai-mtl-wheel --weights /kaggle/input/my-weights/resnet34.pth \\
        --arch resnet34 --data /kaggle/input/my-data --csv train.csv --test-csv test.csv \\
        --mask-col mask --codes background lesion --label-col diagnosis --size 256 --epochs 8

Everything it writes goes to `--work` (default /kaggle/working, else ./working): the item cache, `models/`, the
exported learner `model.pkl`, the weights `models/weights.safetensors`, and `submission.csv` (one row per test image:
labels and probabilities, boxes in the photo's pixels, masks as run-length encodings). `--demo` makes a small
synthetic dataset instead of `--data` (what the test suite runs, on CPU).
"""
import argparse, importlib, os, subprocess, sys
from pathlib import Path

def ensure_installed(wheels:Path=None):
    "Import fastai_mtl; if it is not installed and `wheels` is given, install it from there with `pip --no-deps --no-index` first"
    try: return importlib.import_module('fastai_mtl')
    except ImportError:
        if wheels is None: raise SystemExit('fastai_mtl is not installed: pass --wheels DIR (a folder holding its wheel)')
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index', '--find-links', str(wheels), 'fastai_mtl'], check=True)
    importlib.invalidate_caches()
    return importlib.import_module('fastai_mtl')

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--wheels', type=Path, help='folder with the fastai_mtl wheel (installed with --no-deps when missing)')
    p.add_argument('--work', type=Path, default=Path('/kaggle/working') if Path('/kaggle/working').is_dir() else Path('working'))
    p.add_argument('--data', type=Path, help='folder of the images (file names in the CSVs are relative to it)')
    p.add_argument('--csv', default='train.csv', help='training CSV in --data: a row per image, empty cells for missing targets')
    p.add_argument('--test-csv', help='CSV in --data of the images to predict (default: the validation rows)')
    p.add_argument('--fn-col', default='fn')
    p.add_argument('--valid-col', help='boolean column of the validation rows (default: a random 20%%)')
    p.add_argument('--mask-col'); p.add_argument('--codes', nargs='+'); p.add_argument('--label-col', nargs='+')
    p.add_argument('--box-cols', nargs=4)
    p.add_argument('--demo', action='store_true', help='a small synthetic dataset (shapes: mask, shape, box) instead of --data')
    p.add_argument('--arch', default='resnet34', help="a torchvision resnet name, or 'timm:<name>' for a timm body")
    p.add_argument('--weights', type=Path, help='local backbone weights: a torchvision or timm state dict file')
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--epochs', type=int, default=5, help='fine_tune epochs (0: predict with the pretrained body and new heads)')
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--no-cache', action='store_true', help='decode images every epoch instead of caching them on the working disk')
    return p.parse_args(argv)

def main(argv=None):
    a = parse(argv)
    ensure_installed(a.wheels)
    import torch, pandas as pd
    from fastai.vision.all import set_seed, SaveModelCallback
    import torchvision.models as tvm
    import fastai_mtl
    from fastai_mtl.all import MTLDataLoaders, mtl_learner, synth_shapes, SHAPE_CODES, shortcut_tasks
    print(f'fastai_mtl {fastai_mtl.__version__} from {Path(fastai_mtl.__file__).parent}', flush=True)
    a.work.mkdir(parents=True, exist_ok=True)
    set_seed(0)
    if a.demo:
        data, df = synth_shapes(96, size=48, seed=0, missing={'mask': 0.5, 'box': 0.3}, path=a.work/'demo_data')
        tasks = shortcut_tasks('mask', SHAPE_CODES, 'shape', ['x1', 'y1', 'x2', 'y2'])
        valid_col, test = 'is_valid', None
    else:
        if a.data is None: raise SystemExit('pass --data DIR (or --demo)')
        data, df = a.data, pd.read_csv(a.data/a.csv)
        tasks = shortcut_tasks(a.mask_col, a.codes, a.label_col, a.box_cols)
        valid_col = a.valid_col
        test = pd.read_csv(a.data/a.test_csv) if a.test_csv else None
    cache = False if a.no_cache else a.work/'cache'   # Kaggle's inputs are read-only: the cache goes to the working disk
    dls = MTLDataLoaders.from_df(df, data, a.fn_col, tasks, valid_col=valid_col, size=a.size, bs=a.bs, cache=cache, seed=0)
    arch = a.arch[len('timm:'):] if a.arch.startswith('timm:') else getattr(tvm, a.arch)
    learn = mtl_learner(dls, arch, weights=a.weights, pretrained=a.weights is not None, path=a.work)
    if torch.cuda.is_available():
        # T4/P100 GPUs have no bfloat16: fp16 with a gradient scaler (fastai's `to_fp16`)
        learn = learn.to_bf16() if torch.cuda.is_bf16_supported() and torch.cuda.get_device_capability()[0] >= 8 else learn.to_fp16()
    if a.epochs:
        learn.fine_tune(a.epochs, a.lr, cbs=SaveModelCallback(fname='best'))
        print({k: (None if v is None else round(float(v), 4)) for k, v in zip(learn.recorder.metric_names[2:-1], learn.recorder.values[-1][1:])})
    learn.export('model.pkl')
    learn.save_weights('weights')
    sub = learn.submission_df(test if test is not None else dls.valid.items)   # (the demo: its validation images)
    sub.to_csv(a.work/'submission.csv', index=False)
    print(f'wrote {a.work/"model.pkl"}, {a.work/"models"/"weights.safetensors"} and {a.work/"submission.csv"} ({len(sub)} rows, '
          f'columns {list(sub.columns)})')

if __name__ == '__main__': main()
