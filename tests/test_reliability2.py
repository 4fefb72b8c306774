"""Reliability, second round (issue 20): relative paths, regression units, weight files checked against the tasks,
`export` that restores the learner, multi-label delimiters, inference that refuses what training refuses, messages
that point the right way, and the small cases (DWA columns, stale temporary files, file modes, validation-only labels,
boxes outside their image). The cache's cases are in `test_cache.py`, PseudoLabel's settings in `test_pseudo.py`."""
import os, shutil
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from fastai.vision.all import SaveModelCallback, ProgressCallback, load_learner, set_seed
from fastai_mtl.core import MTLDataError
from fastai_mtl.model import CheckpointError
from fastai_mtl.synth import synth_shapes, SHAPE_CODES
from fastai_mtl.tasks import SegmentationTask, ClassificationTask, BoxTask, RegressionTask, MultiLabelTask
from fastai_mtl.data import MTLDataLoaders
from fastai_mtl.learner import mtl_learner
from conftest import quiet_learner, quiet_fit
from fastai_mtl.demo import demo_body

pytestmark = pytest.mark.usefixtures('one_thread')

@pytest.fixture(scope='module')
def synth(): return synth_shapes(64, size=32, seed=5, missing={'mask': 0.4, 'box': 0.3})

def three(): return [SegmentationTask('mask', SHAPE_CODES, decoder='light'), ClassificationTask('colour'), BoxTask()]

def dls_of(path, df, tasks=None, **kw):
    return MTLDataLoaders.from_df(df, path, 'fn', tasks or three(), **{'valid_col': 'is_valid', 'bs': 8, 'num_workers': 0, **kw})

learner, fit = quiet_learner, quiet_fit

def state(learn): return {k: v.clone() for k, v in learn.model.state_dict().items()}
def same(a, b): return a.keys() == b.keys() and all(torch.equal(a[k].nan_to_num(-1), b[k].nan_to_num(-1)) for k in a)

# --- 1. relative paths -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('where', ['data folder', 'beside it'])
def test_relative_paths(synth, tmp_path, monkeypatch, where):
    "`path='.'` run from the data folder, and `'../data'` from a working folder beside it: every checkpoint lands where fastai puts it"
    src, df = synth
    shutil.copytree(src, tmp_path/'data')
    (tmp_path/'work').mkdir()
    monkeypatch.chdir(tmp_path/('data' if where == 'data folder' else 'work'))
    rel = '.' if where == 'data folder' else '../data'
    learn = learner(dls_of(rel, df))
    assert str(learn.path) == rel
    learn.lr_find(num_it=6, show_plot=False)
    fit(learn, 1, 1e-3, cbs=SaveModelCallback(monitor='valid_loss', fname='best'))
    learn.save('m'); learn.load('m'); learn.save_weights('w'); learn.load_weights('w')
    learn.export('m.pkl')
    for f in ('models/best.pth', 'models/m.pth', 'models/w.safetensors', 'm.pkl'): assert (tmp_path/'data'/f).is_file(), f
    assert not list((tmp_path/'data').rglob('.*tmp*'))
    loaded = load_learner(f'{rel}/m.pkl')
    assert list(loaded.predict(f"{rel}/{df.fn[0]}").keys()) == ['mask', 'colour', 'box']

# --- 2. regression in standard units ------------------------------------------------------------------------------------
def area_df(df, scale=30.):
    df = df.copy()
    df['area'] = ((df.x2 - df.x1) * (df.y2 - df.y1) * scale).where(df.x1.notna())
    return df

def test_regression_loss_in_standard_units(synth):
    path, df = synth
    df = area_df(df)
    dls = dls_of(path, df, [ClassificationTask('colour'), RegressionTask('area')])
    task = dls.tasks[1]
    tr = df.area[~df.is_valid].dropna()
    assert task.mean.item() == pytest.approx(tr.mean(), rel=1e-4) and task.std.item() == pytest.approx(tr.std(ddof=0), rel=1e-4)
    learn = learner(dls)
    xb, *yb = dls.one_batch()
    with torch.no_grad(): preds = learn.model(xb)
    loss, n = task.loss(preds[1], yb[1])
    m = task.item_mask(yb[1])
    z = lambda v: (v[m] - task.mean)/task.std
    assert loss.item() == pytest.approx(((z(preds[1]) - z(yb[1]))**2).mean().item(), rel=1e-4)
    assert loss.item() < 10 < ((preds[1][m] - yb[1][m])**2).mean().item()        # the raw MSE is in px^4
    fit(learn, 1, 1e-3)
    assert 0.1*tr.min() < learn.predict(path/df.fn[0])['area'] < 10*tr.max()      # predictions in the user's units

def test_regression_values_refused_by_row(synth):
    path, df = synth
    for bad, msg in ((np.inf, 'have an infinite value'), (1e20, r'have a value more than 1e\+06 robust standard deviations from the median')):
        d = area_df(df); d.loc[7, 'area'] = bad
        with pytest.raises(MTLDataError, match=rf"RegressionTask\('area'\): 1 row\(s\) {msg}.*row 7"):
            dls_of(path, d, [ClassificationTask('colour'), RegressionTask('area')])
    d = area_df(df); d['area'] = d.area.where(d.area.isna(), 5.)
    with pytest.raises(MTLDataError, match=r"same value in \['area'\] \(5\): a constant has nothing to learn"):
        dls_of(path, d, [ClassificationTask('colour'), RegressionTask('area')])
    d = area_df(df); d.loc[7, 'area'] = 1e20
    assert dls_of(path, d, [ClassificationTask('colour'), RegressionTask('area', max_z=1e30)]).tasks[1].mean is not None

# --- 4. weight files and checkpoints of other tasks -----------------------------------------------------------------------
def test_weights_of_other_tasks_refused_naming_the_file(synth, tmp_path):
    path, df = synth
    tasks = lambda *names: [ClassificationTask(n) for n in names]
    a = fit(learner(dls_of(path, df, tasks('colour', 'shape')), path=tmp_path), 1, 1e-3)
    assert a.dls.c == [3, 3]                                  # the same head shapes: only the names tell them apart
    a.save('a'); a.save_weights('a')
    b = learner(dls_of(path, df, tasks('shape', 'colour')), path=tmp_path)
    before = state(b)
    for load, f in ((b.load, 'a.pth'), (b.load_weights, 'a.safetensors')):
        with pytest.raises(CheckpointError, match=rf"{f}.*\['colour', 'shape'\].*\['shape', 'colour'\]"): load('a')
        assert same(before, state(b))                        # nothing overwritten
    c = learner(dls_of(path, df, tasks('colour', 'shape')), path=tmp_path).load_weights('a')
    assert same(state(a), state(c))

def test_damaged_weight_file_names_it(synth, tmp_path):
    path, df = synth
    learn = learner(dls_of(path, df), path=tmp_path)
    (tmp_path/'models').mkdir()
    (tmp_path/'models'/'bad.safetensors').write_bytes(b'not a weight file')
    before = state(learn)
    with pytest.raises(CheckpointError, match=r'bad.safetensors: not a readable safetensors file'): learn.load_weights('bad')
    assert same(before, state(learn))

# --- 5. a failed export leaves the learner whole ----------------------------------------------------------------------------
def test_failed_export_restores_the_learner(synth, tmp_path, monkeypatch):
    path, df = synth
    learn = fit(learner(dls_of(path, df), path=tmp_path), 1, 1e-3)
    learn.export('m.pkl')
    good = (tmp_path/'m.pkl').read_bytes()
    dls, opt = learn.dls, learn.opt
    real = torch.save
    def full(obj, f, *a, **kw):
        real(obj, f, *a, **kw)
        raise OSError(28, 'No space left on device')           # the disk fills up while the learner is written
    monkeypatch.setattr(torch, 'save', full)
    with pytest.raises(OSError, match='No space left'): learn.export('m.pkl')
    monkeypatch.setattr(torch, 'save', real)
    assert learn.dls is dls and learn.opt is opt and len(learn.dls.train) > 0
    assert (tmp_path/'m.pkl').read_bytes() == good and not list(tmp_path.glob('.*tmp*'))
    fit(learn, 1, 1e-3)                                       # trains on: nothing says "a learner from load_learner"

# --- 8. multi-label delimiters -----------------------------------------------------------------------------------------------
def test_multilabel_delimiters(synth):
    path, df = synth
    d = df.copy(); d['tags'] = [f'{s},{c}' for s, c in zip(d['shape'].fillna('x'), d.colour.fillna('y'))]
    with pytest.raises(MTLDataError, match=r"hold labels with ',' in them while labels are split at ' ': pass `label_delim=','`"):
        dls_of(path, d, [MultiLabelTask('tags')])
    d['tags'] = [f'{s}, {c}' if i % 2 else f'{s},{c}' for i, (s, c) in enumerate(zip(d['shape'].fillna('x'), d.colour.fillna('y')))]
    dls = dls_of(path, d, [MultiLabelTask('tags', label_delim=',')])
    vocab = list(dls.tasks[0].vocab)
    assert not any(v != v.strip() for v in vocab) and len(vocab) == len(set(vocab)) == d.tags.str.split(',').explode().str.strip().nunique()

# --- 10. inference refuses what training refuses -------------------------------------------------------------------------------
def test_inference_refuses_deep_images_and_bad_arrays(synth, tmp_path):
    path, df = synth
    learn = learner(dls_of(path, df))
    deep = tmp_path/'deep.png'
    Image.fromarray(np.full((32, 32), 3000, np.uint16)).save(deep)
    assert Image.open(deep).mode.startswith('I')
    with pytest.raises(MTLDataError, match=r"image '.*deep.png' has mode 'I;16' \(16-bit or float\)"): learn.predict(deep)
    with pytest.raises(MTLDataError, match=r"test item 1: image '.*deep.png'"): learn.dls.test_dl([path/df.fn[0], deep])
    a = np.full((32, 32, 3), 0.5, np.float32); a[3, 4, 1] = np.nan
    with pytest.raises(MTLDataError, match=r'1 NaN or infinite value'): learn.predict(a)
    with pytest.raises(MTLDataError, match=r'an array of float32 .* images are 8-bit'): learn.predict(np.nan_to_num(a))
    with pytest.raises(MTLDataError, match=r'1 NaN'): learn.predict(torch.tensor(a))
    assert set(learn.predict(np.zeros((32, 32, 3), np.uint8)).keys()) == {'mask', 'colour', 'box'}

def test_predict_is_not_unpacked_as_fastais(synth):
    learn = learner(dls_of(*synth))
    res = learn.predict(synth[0]/synth[1].fn[0])
    with pytest.raises(TypeError, match=r"one result per task \('mask', 'colour', 'box'\), not fastai's `\(pred, idx, probs\)`"):
        pred, idx, probs = res                                         # fastbook's first inference line
    label, probs = res['colour']
    assert label in learn.dls.tasks[1].vocab and dict(res).keys() == res.keys() and len(res) == 3

# --- 12. small cases ----------------------------------------------------------------------------------------------------------
def test_dwa_weights_fill_their_columns(synth):
    learn = fit(learner(dls_of(*synth), weighting='dwa'), 3, 1e-3)
    names = list(learn.recorder.metric_names[1:-1])
    assert names[-3:] == ['mask_w', 'colour_w', 'box_w']
    for row in learn.recorder.values:
        assert len(row) == len(names)
        w = row[-3:]
        assert all(isinstance(v, float) for v in w) and sum(w) == pytest.approx(3, abs=1e-4)
    assert learn.recorder.values[-1][-3:] != [1., 1., 1.]     # epoch 3 uses the loss ratios of epochs 1 and 2

def test_stale_temporary_files_go_and_modes_are_usual(synth, tmp_path):
    path, df = synth
    learn = learner(dls_of(path, df), path=tmp_path)
    models = tmp_path/'models'; models.mkdir()
    dead = 2**22 + 12345                                      # above Linux's default pid_max: no such process
    stale = [models/f'.m.tmp-{dead}.pth', models/f'.w.tmp-{dead}.safetensors']
    alive = models/f'.m.tmp-{os.getppid()}.pth'                # a save in progress elsewhere: kept
    for f in (*stale, alive): f.write_bytes(b'x' * 1000)
    learn.save('m'); learn.save_weights('w')
    assert not any(f.exists() for f in stale) and alive.exists()
    umask = os.umask(0); os.umask(umask)
    for f in ('m.pth', 'w.safetensors'): assert (models/f).stat().st_mode & 0o777 == 0o666 & ~umask, f

def test_validation_only_label_found_before_training(synth):
    path, df = synth
    d = df.copy(); r = d.index[d.is_valid & d.colour.notna()][0]; d.loc[r, 'colour'] = 'purple'
    with pytest.raises(MTLDataError, match=rf"ClassificationTask\('colour'\): 1 row\(s\) of the validation set have a label no "
                                           rf"training row has \(\['purple'\]\).*row {r}"):
        dls_of(path, d)
    assert 'purple' in dls_of(path, d, [ClassificationTask('colour', vocab=['blue', 'green', 'red', 'purple'])]).tasks[0].vocab
    d = df.copy(); d['tags'] = d.colour; d.loc[r, 'tags'] = 'purple'
    with pytest.raises(MTLDataError, match=r"MultiLabelTask\('tags'\): 1 row\(s\) of the validation set .*\['purple'\]"):
        dls_of(path, d, [MultiLabelTask('tags')])

def test_box_outside_its_image_found_by_the_fast_check(synth):
    path, df = synth
    d = df.copy(); r = d.index[d.is_valid & d.x1.notna()][0]; d.loc[r, ['x2', 'y2']] = [40., 30.]
    with pytest.raises(MTLDataError, match=rf"row {r}.*box \(.*, 40, 30\) reaches outside its 32x32 \(w x h\) image"): dls_of(path, d)
    d.loc[r, ['x2', 'y2']] = [33., 32.]                      # inclusive pixel coordinates: one pixel of slack
    dls_of(path, d)

def test_interpretation_without_a_task_and_without_labelled_items(synth):
    import matplotlib.pyplot as plt
    from fastai_mtl.interpret import MTLInterpretation
    path, df = synth
    d = df.copy(); d.loc[d.is_valid, 'mask'] = None                  # no mask to measure in the validation set
    with pytest.warns(UserWarning, match='no labelled sample in the validation set'): dls = dls_of(path, d)
    learn = fit(learner(dls), 1, 1e-3)
    interp = MTLInterpretation.from_learner(learn)
    interp.plot_top_losses(4); interp.plot_confusion_matrix(); interp.plot_worst()      # fastai's habit: no task named
    assert set(interp.most_confused().columns) >= {'task', 'actual', 'predicted'}
    for f in (interp.plot_top_losses, interp.plot_worst):
        with pytest.raises(ValueError, match=r"task 'mask' has no labelled item among the \d+ items of this set: nothing to show"):
            f('mask')
    plt.close('all')

def test_overflowing_gradient_norm_is_called_so(synth):
    from fastai.vision.all import Callback
    from fastai_mtl.learner import MTLTrainingError
    class Huge(Callback):
        order = -40                                                   # before `TrainingGuard` looks at the gradients
        def after_backward(self):
            for p in self.learn.model.parameters():
                if p.grad is not None: p.grad.mul_(1e30)
    learn = learner(dls_of(*synth), cbs=Huge())
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(MTLTrainingError, match=r'the gradients are finite but huge at epoch 0, batch 0 .*: their norm, .*e\+\d+, overflows float32'):
        fit(learn, 1, 1e-3)
    assert all(torch.equal(a, p) for a, p in zip(before, learn.model.parameters()))   # stopped before the step

# --- issue 19: the primary task decides which model is kept; one note about a rare task ------------------------------------------
def test_primary_task_drives_model_selection(synth, tmp_path):
    from fastai.vision.all import EarlyStoppingCallback, Callback
    path, df = synth
    dls = dls_of(path, df)
    with pytest.raises(ValueError, match="unknown task 'nope'"): learner(dls, primary='nope')
    learn = learner(dls, primary='colour', path=tmp_path)
    assert learn.primary == 'colour' and learn.primary_metric == 'colour_acc'
    save, stop = SaveModelCallback(fname='best'), EarlyStoppingCallback(patience=10)
    kept = []
    class Note(Callback):
        order = 99                                                     # after the tracker saved (or not) this epoch
        def after_epoch(self): kept.append(save.best)
    fit(learn, 4, 3e-3, cbs=[save, stop, Note()])
    accs = [row[learn.recorder.metric_names[1:].index('colour_acc')] for row in learn.recorder.values]
    assert save.monitor == stop.monitor == 'colour_acc' and save.comp == np.greater
    assert kept == list(np.maximum.accumulate(accs))                    # the best colour accuracy so far, not the lowest loss
    best = learner(dls, path=tmp_path).load('best')
    assert best.validate()[learn.recorder.metric_names[1:].index('colour_acc') - 1] == pytest.approx(max(accs))   # (no train_loss)
    plain = SaveModelCallback(fname='plain')
    fit(learner(dls, path=tmp_path), 1, 1e-3, cbs=plain)
    assert plain.monitor == 'valid_loss'                                # without a primary: fastai's default
    mine = SaveModelCallback(monitor='mask_miou', fname='mine')
    fit(learner(dls, primary='colour', path=tmp_path), 1, 1e-3, cbs=mine)
    assert mine.monitor == 'mask_miou'                                  # a monitor chosen by the user stays

def test_a_rare_task_is_noted_once(synth):
    import warnings
    from fastai_mtl import learner as L
    path, df = synth
    d = df.copy(); d.loc[d.index[~d.is_valid][6:], 'mask'] = None     # 6 training masks: rare
    dls = dls_of(path, d)
    L._noted.clear()
    with pytest.warns(UserWarning, match=r"'mask' labels \d+% of the training images, '(colour|box)' .*compare_tasks\(dls, 'mask', "):
        learner(dls)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        learner(dls)
    assert not [x for x in w if 'compare_tasks' in str(x.message)]      # once
    L._noted.clear()                                                     # the learner's own tasks, in its order, named right
    with pytest.warns(UserWarning, match=r"'mask' labels \d+% of the training images, 'colour' .*compare_tasks\(dls, 'mask', 'colour'\)"):
        learner(dls, tasks=[dls.tasks['colour'], dls.tasks['mask']])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        learner(dls, tasks=[dls.tasks['mask'], dls.tasks['colour']])
    assert not [x for x in w if 'compare_tasks' in str(x.message)]      # the same tasks in another order: said already
    L._noted.clear()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        learner(dls_of(*synth))
    assert not [x for x in w if 'compare_tasks' in str(x.message)]      # nothing rare: nothing said

# --- issue 22: mixed precision on a CPU, and records kept after a refused fit ------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU message')
def test_fp16_on_cpu_says_bf16_and_bf16_is_quiet(synth):
    import warnings
    learn = learner(dls_of(*synth))
    n = len(learn.cbs)
    with pytest.warns(UserWarning, match=r'to_fp16: fp16 mixed precision needs a CUDA GPU.*learn.to_bf16\(\)'): learn.to_fp16()
    assert len(learn.cbs) == n                                         # nothing changed
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        fit(learn.to_bf16(), 1, 1e-3)
    assert not [x for x in w if 'autocast' in str(x.message)], [str(x.message) for x in w]

def test_refused_fit_keeps_the_last_records(synth):
    learn = fit(learner(dls_of(*synth)), 2, 1e-3)
    before = (list(learn.recorder.losses), list(learn.recorder.values), list(learn.recorder.metric_names))
    with pytest.raises(ValueError, match="monitor='nope' is not a recorded value"):
        fit(learn, 1, 1e-3, cbs=SaveModelCallback(monitor='nope'))
    assert (learn.recorder.losses, learn.recorder.values, list(learn.recorder.metric_names)) == before and len(before[1]) == 2
    learn.recorder.plot_loss()
    import matplotlib.pyplot as plt; plt.close('all')

def test_save_model_callback_when_no_epoch_improves(synth, tmp_path):
    import warnings
    path, df = synth
    d = df.copy(); d.loc[d.is_valid, 'mask'] = None                  # no mask to measure: mask_miou never improves
    with pytest.warns(UserWarning, match='no labelled sample in the validation set'): dls = dls_of(path, d)
    learn = learner(dls, path=tmp_path)
    with pytest.warns(UserWarning, match="no epoch improved mask_miou, so no model was saved in this fit: the model is the last epoch's"):
        fit(learn, 1, 1e-3, cbs=SaveModelCallback(monitor='mask_miou', fname='best'))
    saved = torch.load(tmp_path/'models'/'best.pth', weights_only=False)
    assert all(torch.equal(saved[k].nan_to_num(-1), v.nan_to_num(-1)) for k, v in learn.model.state_dict().items() if k in saved)
    cb = SaveModelCallback(fname='again')                             # fits that improve, into the same file: nothing said
    fit(learn, 1, 1e-3, cbs=cb)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        fit(learn, 1, 1e-3, cbs=cb)
    assert not [x for x in w if 'no epoch improved' in str(x.message)]
