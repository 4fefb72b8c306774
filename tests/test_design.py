"""The design's promises: modules on floors (nothing imports upward), fastai's classes left as they are, an architecture
and a weighting are one piece of user code each (the weighting: tests/test_weighting.py::test_weighting_written_outside)."""
import ast, subprocess, sys, warnings
from pathlib import Path
import numpy as np, pytest, torch
from torch import nn
from fastai.vision.all import ConvLayer, set_seed, Learner, DataLoaders, SaveModelCallback
from conftest import ROOT

# --- the floors ------------------------------------------------------------------------------------------------
# A module may import from the floors below its own, never from its own or above (the map of the "How fastai_mtl fits
# together" page, nbs/00a_design.ipynb).
FLOORS = [['core'],
          ['synth', 'pets', 'transforms', 'losses', 'layers', 'samplers', 'weighting', 'cache'],
          ['metrics', 'loader', 'recorder', 'model', 'alternation'],
          ['tasks'],
          ['data'],
          ['learner'],
          ['crossstitch', 'interpret', 'pseudo', 'compare', 'demo'],
          ['transfer'],
          ['all']]

def _imports(fn:Path) -> set:
    "The package's modules `fn` imports (relative imports and `fastai_mtl.x`)"
    res = set()
    for node in ast.walk(ast.parse(fn.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1: res.add(mod.split('.')[0] if mod else None)
            elif mod.startswith('fastai_mtl.'): res.add(mod.split('.')[1])
            if node.level == 1 and not mod: res |= {a.name for a in node.names}
    return res - {None}

def test_modules_stand_on_floors():
    floor = {m: i for i, ms in enumerate(FLOORS) for m in ms}
    mods = sorted(f.stem for f in (ROOT/'fastai_mtl').glob('*.py') if not f.stem.startswith('_'))
    assert sorted(floor) == mods, f'modules not on the map: {sorted(set(mods) - set(floor))}; gone: {sorted(set(floor) - set(mods))}'
    upward = [f'{m} (floor {floor[m]}) imports {d} (floor {floor[d]})'
              for m in mods for d in sorted(_imports(ROOT/'fastai_mtl'/f'{m}.py')) if floor[d] >= floor[m]]
    assert not upward, upward

# --- fastai is left as it is -----------------------------------------------------------------------------------
CHECK = '''
import json, warnings
from fastai.vision.all import *      # fastai's own modules first: they add methods to Learner themselves
import fastai.callback.tracker as T, fastai.interpret as I, fastai.learner as L, fastai.data.core as D, fastai.callback.core as C
classes = [T.TrackerCallback, T.SaveModelCallback, T.EarlyStoppingCallback, T.ReduceLROnPlateau, I.Interpretation,
           I.ClassificationInterpretation, I.SegmentationInterpretation, L.Learner, L.Recorder, D.DataLoaders, D.TfmdDL, C.Callback]
def state(): return {c.__qualname__: {k: repr(v) for k,v in vars(c).items()} for c in classes}
before, filters = state(), list(warnings.filters)
import fastai_mtl.all
print(json.dumps(dict(same=state() == before, changed=[k for k,v in state().items() if v != before[k]],
                      filters_same=list(warnings.filters) == filters)))
'''

def test_importing_changes_nothing_of_fastai():
    "fastai's trackers, interpretation, learner and DataLoaders classes, and the warnings filters, are what they were"
    import json
    r = subprocess.run([sys.executable, '-c', CHECK], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res['same'], f'fastai classes changed by importing fastai_mtl: {res["changed"]}'
    assert res['filters_same'], 'importing fastai_mtl changed the process-wide warnings filters'

def test_a_plain_fastai_learner_behaves_as_without_the_import():
    "fastai's own behaviour for a misspelt monitor (its bare assertion), unchanged in a plain Learner after the import: fastai_mtl's check is for its own learners"
    import fastai_mtl.all  # noqa: F401
    from fastai.test_utils import synth_learner
    learn = synth_learner()
    with learn.no_bar(), pytest.raises(Exception) as e: learn.fit(1, cbs=SaveModelCallback(monitor='nope'))
    assert 'is not a recorded value' not in str(e.value) and not any('TrackerGuard' in type(c).__name__ for c in learn.cbs)
    learn.fit(1, cbs=SaveModelCallback(fname='plain'))   # and its own saving, loading back the best
    assert learn.path.joinpath('models', 'plain.pth').exists()

# --- an architecture written outside the package -------------------------------------------------------------------
def tiny_arch(arch, tasks, n_in=3, pretrained=False, cut=None, img_size=(32, 32), decoder=None, weights=None,
              arch_kwargs=None, **kwargs):
    "One function returning an `MTLModel`: a two-stage conv body, the heads on its skip features"
    from fastai_mtl.layers import EncoderFeatures
    from fastai_mtl.model import MTLModel, MultiTaskHead, head_options
    body = nn.Sequential(ConvLayer(n_in, 8, stride=2), ConvLayer(8, 16, stride=2))
    features = EncoderFeatures(body, img_size)
    return MTLModel(body, MultiTaskHead(tasks, features.nf, features, **head_options(decoder, **kwargs)), tasks, features)

@pytest.fixture(scope='module')
def dls():
    from fastai_mtl.synth import synth_shapes, SHAPE_CODES
    from fastai_mtl.tasks import SegmentationTask, ClassificationTask
    from fastai_mtl.data import MTLDataLoaders
    path, df = synth_shapes(64, size=32, seed=3, missing={'mask': 0.5, 'colour': 0.3})
    return MTLDataLoaders.from_df(df, path, 'fn', [SegmentationTask('mask', SHAPE_CODES, decoder='light'), ClassificationTask('colour')],
                                  valid_col='is_valid', bs=8, num_workers=0)

@pytest.mark.parametrize('kw', [dict(weighting='dwa'), dict(weighting='upgrad'), dict(cbs='pseudo')], ids=['dwa', 'upgrad', 'pseudo'])
def test_an_architecture_written_outside(dls, kw, tmp_path):
    "Registered from outside, chosen by name, trained with a loss weighting, a gradient weighting, pseudo-labels; saved and loaded"
    from fastai_mtl.model import architectures
    from fastai_mtl.learner import mtl_learner
    from fastai_mtl.pseudo import PseudoLabel
    architectures.register('tiny', obj=tiny_arch)
    try:
        set_seed(0)
        if kw.get('cbs') == 'pseudo': kw = dict(cbs=PseudoLabel(ramp=0.))
        learn = mtl_learner(dls, None, pretrained=False, architecture='tiny', path=tmp_path, **kw)
        with learn.no_bar(), learn.no_logging(): learn.fit(2, 3e-3)
        assert all(np.isfinite(v) for v in learn.recorder.values[-1][:2])
        learn.save('t')
        other = mtl_learner(dls, None, pretrained=False, architecture='tiny', path=tmp_path, **kw).load('t')
        for a, b in zip(learn.model.state_dict().values(), other.model.state_dict().values()): assert torch.equal(a.nan_to_num(-1), b.nan_to_num(-1))
    finally: architectures.items.pop('tiny')

def test_an_architecture_must_return_an_mtl_model(dls):
    from fastai_mtl.learner import mtl_learner
    with pytest.raises(TypeError, match='returned a Sequential: an architecture returns an `MTLModel`'):
        mtl_learner(dls, None, pretrained=False, architecture=lambda arch, tasks, **kw: nn.Sequential(nn.Conv2d(3, 3, 1)))
