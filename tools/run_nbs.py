#!/usr/bin/env python
"""Execute notebooks in place and save their outputs (no Jupyter kernel needed), then `nbdev-clean` them.

    python tools/run_nbs.py                  # every notebook in nbs/, all cells (slow ones too)
    python tools/run_nbs.py nbs/07_tasks.ipynb --skip slow   # keep the saved outputs of `#| slow` cells

The docs are built from the saved outputs, so run this after changing a notebook's code.
"""
import argparse, json, subprocess, sys, time, warnings
from pathlib import Path
from nbdev.test import test_nb as run_nb

ROOT = Path(__file__).resolve().parents[1]
KERNELSPEC = {'display_name': 'python3', 'language': 'python', 'name': 'python3'}

# fastai calls `torch.jit.script` at import time, which recent torch deprecates; keep that out of saved outputs
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)

def _terminal(text:str) -> str:
    "What a terminal shows for `text`: each line keeps what follows its last carriage return (progress bars vanish)"
    return '\n'.join(l.split('\r')[-1] for l in text.split('\n'))

def clean_streams(fn):
    "Apply carriage returns in the saved stream outputs of `fn`, so fastai's console progress bars leave only its table"
    nb = json.loads(fn.read_text())
    for c in nb['cells']:
        for o in c.get('outputs', []):
            if o.get('output_type') == 'stream':
                t = _terminal(''.join(o['text']))
                o['text'] = t.splitlines(keepends=True)
    fn.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')

def normalize_metadata(fn):
    "Give `fn` the standard python3 kernelspec and drop editor metadata (e.g. jupytext's)"
    nb = json.loads(fn.read_text())
    nb['metadata'] = {'kernelspec': KERNELSPEC}
    fn.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('nbs', nargs='*', help='notebooks (default: all of nbs/)')
    p.add_argument('--skip', nargs='*', default=[], help='cell flags to leave unexecuted (their old outputs stay)')
    a = p.parse_args()
    fns = [Path(f).resolve() for f in a.nbs] or sorted((ROOT/'nbs').glob('*.ipynb'))
    failed = []
    for fn in fns:
        t = time.time()
        normalize_metadata(fn)
        ok, _ = run_nb(fn, skip_flags=a.skip, save=True, cell_timeout=None)
        print(f"{'ok  ' if ok else 'FAIL'} {fn} ({time.time()-t:.0f}s)", flush=True)
        if not ok: failed.append(fn)
        else:
            clean_streams(fn)
            subprocess.run([str(Path(sys.executable).parent/'nbdev-clean'), '--fname', str(fn)], check=True, cwd=ROOT)
    sys.exit(1 if failed else 0)

if __name__ == '__main__': main()
