#!/usr/bin/env python
"""Does task B help task A on the pets subset? `fastai_mtl.compare_tasks` asked both ways, with the control.

The data of bench/strategies.py: the 302 training images, trimaps kept on a seeded `--mask-pct` of them (15%: the
forum question's scarce masks), breeds on all; A is measured on the official test split (298 images, all labelled).

- **Does the trimap help the breed?** `compare_tasks(dls, 'breed', 'trimap')`: breed alone for the same number of
  optimiser steps (the reference: equal compute), breed + trimap, breed alone on the multi-task batches (equal
  exposure), and breed + the trimap's head with none of its labels (the control: the same extra head, no masks);
- **Does the breed help the trimap?** `compare_tasks(dls, 'trimap', 'breed')`: the same, the other way.

The DataLoaders draw with the library's default sampler (`BalancedSampler()`: half of every batch for the rare
trimaps); EfficientNet-Lite0 with its ImageNet weights (`backbone()` of bench/common.py), light decoder,
`fine_tune(--epochs, --lr)`, `--seeds` seeds; differences to "A alone, same steps" with paired bootstrap intervals
over the test images and the seeds. Writes `compare_pets.json` / `.md`.

    python bench/compare_pets.py [--epochs 4] [--seeds 3] [--size 64] [--quick --out quick_results]
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import *  # noqa: E402,F401
import strategies as S  # noqa: E402

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=Path, default=DEFAULT_DATA, help=DATA_HELP)
    p.add_argument('--size', type=int, default=64)
    p.add_argument('--bs', type=int, default=16)
    p.add_argument('--epochs', type=int, default=4, help="fine_tune's epochs (after one frozen epoch)")
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--mask-pct', type=float, default=0.15)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--quick', action='store_true', help='tiny end-to-end check: 32 px, 48 training / 24 test images, 1 epoch, 2 seeds')
    p.add_argument('--out', type=Path, default=RESULTS)
    a = p.parse_args(argv)
    a.breed_pct, a.mask_seed, a.n_train, a.n_test = 1.0, 0, None, None
    if a.quick: a.size, a.bs, a.epochs, a.seeds, a.n_train, a.n_test = 32, 4, 1, 2, 48, 24
    return a

def main(argv=None):
    a = parse(argv)
    check_data(a.data)
    set_threads(a.threads)
    import warnings
    from fastai.vision.all import aug_transforms, Normalize
    from fastai_mtl.all import MTLDataLoaders, compare_tasks
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        df = S.experiment_df(a)
        df = S.build_cache(a, df, Path(tmp))
        arch, pretrained, stats, arch_name = backbone()
        dls = MTLDataLoaders.from_df(df, Path(tmp), 'fn', S.config_tasks('balanced+equal'), valid_col='is_valid', size=a.size,
                                     bs=a.bs, num_workers=0, batch_tfms=[*aug_transforms(), Normalize.from_stats(*stats)])
        res = {}
        for target, helper in (('breed', 'trimap'), ('trimap', 'breed')):
            print(f'== does {helper} help {target}?', flush=True)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                tab = compare_tasks(dls, target, helper, arch=arch, pretrained=pretrained, seeds=a.seeds, epochs=a.epochs,
                                    lr=a.lr, decoder='light', plot=False)
            print(tab.round(3).to_string(), flush=True)
            res[f'{helper} -> {target}'] = tab.reset_index().to_dict('records')
    meta = dict(data=a.data.name, arch=arch_name, size=a.size, bs=a.bs, epochs=a.epochs, lr=a.lr, seeds=a.seeds,
                mask_pct=a.mask_pct, n_train=int((~df.is_valid).sum()), n_masks=int((~df.is_valid & df.has_mask).sum()),
                n_test=int(df.is_valid.sum()), threads=a.threads, cpus=os.cpu_count(), total_s=round(time.time() - t0), quick=a.quick)
    lines = [f"compare_tasks on {meta['data']}: {meta['arch']}, {a.size} px, bs {a.bs}, fine_tune({a.epochs}, {a.lr}), "
             f"{a.seeds} seeds; {meta['n_train']} training images ({meta['n_masks']} with a trimap, all with a breed), "
             f"{meta['n_test']} test images. Δ: difference to the target alone for the same number of steps, 95% paired-bootstrap interval; "
             f"total {meta['total_s']} s.", '']
    for q, rows in res.items():
        lines += [f'**{q}**', '', '| metric | configuration | value [95% CI] | Δ [95% CI] |', '| --- | --- | ---: | ---: |']
        lines += [f"| {r['metric']} | {r['config']} | {r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                  f"{r['diff']:+.3f} [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}] |" for r in rows]
        lines.append('')
    md = '\n'.join(lines)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out/'compare_pets.json').write_text(json.dumps(dict(meta=meta, results=res), indent=1, default=float))
    (a.out/'compare_pets.md').write_text(md)
    print(md)

if __name__ == '__main__': main()
