#!/usr/bin/env python
"""Does `PseudoLabel` help? Two settings of partial labels on the Oxford-IIIT Pet subset, run by bench/strategies.py:

- `trimaps15`: trimaps kept on 15% of the training images, breeds on all (the forum user's 3,000 masks and 33,000 labels);
- `breeds30`: breed labels kept on 30% of the training images, trimaps on all.

In each: the scarce task alone for the same number of steps (`seg-only` / `breed-only`: equal compute, the comparison
that comes first), the scarce task alone at equal exposure (`seg-only=exposure` / `breed-only=exposure`: as many
labelled items of it as the multi-task run saw), plain multi-task (`balanced+equal`, the reference) and multi-task with
`PseudoLabel()` at its defaults (`balanced+equal+pseudo`): the same batches of labelled items, plus pseudo-targets for
the items that miss one. Several seeds; differences to `balanced+equal` with paired bootstrap intervals over the test images and the
seeds (`fastai_mtl.compare.paired_bootstrap`); cost: wall time and peak memory as ratios of the medians over seeds.

Writes `pseudo_trimaps15.{json,md}`, `pseudo_breeds30.{json,md}` (each run's table) and `pseudo.md` (both, with the
pseudo-targets made per epoch).

`--variants` asks why: it reruns a setting with `PseudoLabel`'s settings changed one at a time (its weight, when it
starts, the thresholds, the teacher's decay, the strong view), each against `balanced+equal` on the same seeds, and
writes `pseudo_variants_<setting>.md`.

    python bench/pseudo.py [--epochs 6] [--seeds 0 1 2] [--settings trimaps15 breeds30] [--quick --out quick_results]
    python bench/pseudo.py --variants default weight0.3 start0.5 --settings trimaps15 --seeds 0 1
"""
import argparse, json, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import strategies as S  # noqa: E402
from common import RESULTS  # noqa: E402

SETTINGS = {'trimaps15': dict(mask_pct=0.15, breed_pct=1.0, configs=['balanced+equal', 'balanced+equal+pseudo', 'seg-only', 'seg-only=exposure']),
            'breeds30': dict(mask_pct=1.0, breed_pct=0.3, configs=['balanced+equal', 'balanced+equal+pseudo', 'breed-only', 'breed-only=exposure'])}

VARIANTS = {'default': {}, 'weight0.3': dict(weight=0.3), 'start0.5': dict(start=0.5),
            'thresholds0.98': dict(thresholds={'trimap': 0.98, 'breed': 0.98}), 'decay0.999': dict(decay=0.999),
            'no-strong-view': dict(strong=[]), 'weak-lighting': dict(max_lighting=0.1)}

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument('--epochs', type=int, default=6, help='budget: passes over the training images in mixed batches')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--size', type=int, default=64)
    p.add_argument('--variants', nargs='+', default=None, choices=list(VARIANTS), help='PseudoLabel settings to compare (see above)')
    p.add_argument('--quick', action='store_true', help="tiny end-to-end check (strategies.py's --quick)")
    p.add_argument('--out', type=Path, default=RESULTS)
    return p.parse_known_args(argv)

def summary(name:str, res:dict) -> str:
    "The run's table, and the pseudo-targets made (per task, summed over the run, mean over seeds)"
    md = (Path(res['_out'])/f'{name}.md').read_text()
    runs = [r for r in res['runs'] if r.get('pseudo')]
    if not runs: return md
    keys = [k for k in runs[0]['pseudo'][0] if k.endswith('_pseudo') or k.endswith('_missing')]
    tot = {k: sum(sum(e[k] for e in r['pseudo']) for r in runs)/len(runs) for k in keys}
    tasks = [k[:-len('_pseudo')] for k in keys if k.endswith('_pseudo')]
    line = '; '.join(f"{t}: {tot[t + '_pseudo']:.0f} of {tot[t + '_missing']:.0f} missing targets made pseudo-targets" for t in tasks)
    return md + f'\nPseudo-targets (`balanced+equal+pseudo`, summed over the run, mean over seeds): {line}.\n'

def variants(a, rest):
    "Each setting with each variant of PseudoLabel's settings, against balanced+equal on the same seeds: one table per setting"
    for name in a.settings:
        st, lines = SETTINGS[name], []
        for v in a.variants:
            kw = VARIANTS[v]
            args = ['--mask-pct', str(st['mask_pct']), '--breed-pct', str(st['breed_pct']), '--configs', 'balanced+equal', 'balanced+equal+pseudo',
                    '--epochs', str(a.epochs), '--size', str(a.size), '--seeds', *map(str, a.seeds), '--out', str(a.out),
                    '--name', f'pseudo_{name}_{v}', '--pseudo-kw', json.dumps(kw), *rest] + (['--quick'] if a.quick else [])
            print(f'== {name}, {v}: {kw}', flush=True)
            S.main(args)
            res = json.loads((a.out/f'pseudo_{name}_{v}.json').read_text())
            row = next(r for r in res['rows'] if r['config'] == 'balanced+equal+pseudo')
            runs = [r for r in res['runs'] if r.get('pseudo')]
            made = {t: sum(sum(e[f'{t}_pseudo'] for e in r['pseudo']) for r in runs)/len(runs) for t in ('trimap', 'breed')}
            d = lambda k: '' if f'{k}_diff' not in row else '{diff:+.3f} [{low:+.3f}, {high:+.3f}]'.format(**row[f'{k}_diff'])
            lines.append(f"| {v} | `{json.dumps(kw)}` | {d('trimap_miou')} | {d('breed_acc')} | {made['trimap']:.0f} | {made['breed']:.0f} | "
                         f"{row['wall_s_ratio']:.2f} |")
        md = (f'PseudoLabel variants, setting {name} ({a.epochs} epochs, {a.size} px, seeds {a.seeds}): each against balanced+equal on '
              'the same seeds; Δ with 95% paired-bootstrap intervals; pseudo-targets made over the run (mean over seeds).\n\n'
              '| variant | PseudoLabel(...) | Δ mIoU | Δ breed acc | pseudo trimaps | pseudo breeds | wall / ref |\n'
              '| --- | --- | ---: | ---: | ---: | ---: | ---: |\n' + '\n'.join(lines) + '\n')
        (a.out/f'pseudo_variants_{name}.md').write_text(md)
        print(md)

def main(argv=None):
    a, rest = parse(argv)
    if a.variants: return variants(a, rest)
    out = []
    for name in a.settings:
        st = SETTINGS[name]
        args = ['--mask-pct', str(st['mask_pct']), '--breed-pct', str(st['breed_pct']), '--configs', *st['configs'],
                '--epochs', str(a.epochs), '--size', str(a.size), '--seeds', *map(str, a.seeds), '--out', str(a.out),
                '--name', f'pseudo_{name}', *rest] + (['--quick'] if a.quick else [])
        print(f'== {name}: bench/strategies.py {" ".join(args)}', flush=True)
        S.main(args)
        res = json.loads((a.out/f'pseudo_{name}.json').read_text())
        res['_out'] = str(a.out)
        out.append(f'## {name}\n\n' + summary(f'pseudo_{name}', res))
    md = '# PseudoLabel on partial labels (bench/pseudo.py)\n\n' + '\n'.join(out)
    (a.out/'pseudo.md').write_text(md)
    print(md)

if __name__ == '__main__': main()
