"""Nothing lost, nothing silently wrong (issue 11): atomic checkpoints (a kill mid-save), divergence stopped with the
task named, tracker callbacks on per-task metrics, bad labels and files caught before training, state left behind,
clear messages, safe weights, test-time augmentation."""
import os, signal, subprocess, sys, textwrap, time, warnings
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from fastai.vision.all import (Callback, SaveModelCallback, EarlyStoppingCallback, ReduceLROnPlateau, set_seed,
                               load_learner, ProgressCallback)
from fastai_mtl.core import MTLDataError, IGNORE_INDEX
from fastai_mtl.synth import synth_shapes, SHAPE_CODES
from fastai_mtl.tasks import SegmentationTask, ClassificationTask, BoxTask, RegressionTask
from fastai_mtl.data import MTLDataLoaders
from fastai_mtl.learner import mtl_learner, MTLTrainingError, TrainingGuard
from fastai_mtl.demo import demo_body
from conftest import ROOT, quiet_learner, quiet_fit

pytestmark = pytest.mark.usefixtures('one_thread')

@pytest.fixture(scope='module')
def synth(): return synth_shapes(80, size=32, seed=3, missing={'mask': 0.4, 'box': 0.3})

def dls_of(path, df, tasks=None, **kw):
    kw = {'valid_col': 'is_valid', 'bs': 8, 'num_workers': 0, **kw}
    return MTLDataLoaders.from_df(df, path, 'fn', tasks or [SegmentationTask('mask', SHAPE_CODES, decoder='light'),
                                                             ClassificationTask('colour'), BoxTask()], **kw)

learner, fit = quiet_learner, quiet_fit

# --- 1. 0/255 masks -----------------------------------------------------------------------------------------------
def test_binary_mask_saved_as_0_255(tmp_path):
    img = np.zeros((16, 16, 3), np.uint8); m = np.zeros((16, 16), np.uint8); m[4:12, 4:12] = 255
    (tmp_path/'i').mkdir(); rows = []
    for k in range(6):
        Image.fromarray(img).save(tmp_path/'i'/f'{k}.png'); Image.fromarray(m).save(tmp_path/'i'/f'{k}_m.png')
        rows.append(dict(fn=f'i/{k}.png', mask=f'i/{k}_m.png', is_valid=k > 3))
    df = pd.DataFrame(rows)
    seg = lambda **kw: [SegmentationTask('mask', ['background', 'lesion'], **kw)]
    with pytest.raises(MTLDataError, match=r"holds only the values 0 and 255.*`code_map=\{255: 1\}`"):
        dls_of(tmp_path, df, seg(), bs=2, check='full')            # found up front, every mask decoded
    with pytest.raises(MTLDataError, match=r"holds only the values 0 and 255"):
        dls_of(tmp_path, df, seg(), bs=2)                           # and by default when the first sample is read
    dls = dls_of(tmp_path, df, seg(code_map={255: 1}), bs=2)
    assert set(dls.one_batch()[1].unique().tolist()) == {0, 1}

# --- 2. atomic checkpoints ------------------------------------------------------------------------------------------
SAVER = textwrap.dedent('''
    import sys, torch
    from fastai.vision.all import resnet18
    from fastai_mtl.synth import synth_shapes, SHAPE_CODES
    from fastai_mtl.tasks import SegmentationTask, ClassificationTask
    from fastai_mtl.data import MTLDataLoaders
    from fastai_mtl.learner import mtl_learner
    path, df = synth_shapes(16, size=32, seed=0)
    dls = MTLDataLoaders.from_df(df, path, 'fn', [SegmentationTask('mask', SHAPE_CODES), ClassificationTask('colour')],
                                 valid_col='is_valid', bs=4, num_workers=0)
    learn = mtl_learner(dls, resnet18, pretrained=False, decoder='dynamic', path=sys.argv[1])   # ~40M parameters
    learn.save('ck'); learn.export('model.pkl')
    print('SAVED', flush=True)
    i = 0
    while True:
        with torch.no_grad():
            for p in learn.model.parameters(): p.add_(1.)
        learn.save('ck') if i % 2 == 0 else learn.export('model.pkl')
        i += 1
''')

@pytest.mark.slow
def test_kill_during_save_keeps_the_previous_file(tmp_path):
    script = tmp_path/'saver.py'; script.write_text(SAVER)
    for trial, delay in enumerate((0.3, 1.1, 2.3)):
        out = tmp_path/f't{trial}'
        p = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert p.stdout.readline().strip() == 'SAVED'
        time.sleep(delay)
        p.send_signal(signal.SIGKILL); p.wait()
        sd = torch.load(out/'models'/'ck.pth', weights_only=False)  # whole: the last complete save (a file written here)
        # the first save has no optimiser yet (a bare state dict); later ones {'model', 'opt'}: either way, whole
        assert (sd['model'] if 'model' in sd else sd)['body.0.weight'].shape[0] == 64
        learn = load_learner(out/'model.pkl')
        assert len(learn.tasks) == 2

def test_save_and_savemodelcallback_are_atomic(synth, tmp_path, monkeypatch):
    import fastai_mtl.learner as L
    replaced = []
    real = os.replace
    monkeypatch.setattr(L.os, 'replace', lambda a, b: (replaced.append((str(a), str(b))), real(a, b))[1])
    learn = learner(dls_of(*synth), path=tmp_path)
    fit(learn, 2, 1e-3, cbs=SaveModelCallback(monitor='valid_loss', every_epoch=True))
    assert [os.path.basename(b) for _, b in replaced] == ['model_0.pth', 'model_1.pth']
    assert all('.tmp-' in os.path.basename(a) for a, _ in replaced) and not list((tmp_path/'models').glob('.*tmp*'))

# --- 3. divergence -------------------------------------------------------------------------------------------------
def test_divergence_stops_and_names_the_task(synth):
    class Explode(Callback):
        order = 5
        def after_pred(self):
            if self.training and self.iter == 1: self.learn.pred = (self.pred[0], self.pred[1]*float('inf'), self.pred[2])
    learn = learner(dls_of(*synth), cbs=Explode())
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(MTLTrainingError, match=r"the loss of task\(s\) \['colour'\] is not finite at epoch 0, batch 1"):
        fit(learn, 1, 1e-3)
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, learn.model.parameters()))   # batch 0 was trained
    learn = learner(dls_of(*synth), guard=False, cbs=Explode())                          # off: fastai's own behaviour
    assert not any(isinstance(c, TrainingGuard) for c in learn.cbs)

def test_too_high_lr_stops_at_once(synth):
    learn = learner(dls_of(*synth))
    with pytest.raises(MTLTrainingError, match='not finite'): fit(learn, 2, 1e12)
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())

# --- 4. tracker callbacks -------------------------------------------------------------------------------------------
def test_trackers_on_a_task_without_validation_labels(synth, tmp_path):
    path, df = synth
    df = df.copy(); df.loc[df.is_valid, 'mask'] = None            # no mask in the validation set
    dls = dls_of(path, df)
    for cb in (SaveModelCallback(monitor='mask_miou'), EarlyStoppingCallback(monitor='mask_miou', patience=1),
               ReduceLROnPlateau(monitor='mask_miou', patience=1)):
        learn = learner(dls, path=tmp_path)
        with pytest.warns(UserWarning, match='mask_miou has no value at epoch 0'): fit(learn, 2, 1e-3, cbs=cb)
    with pytest.raises(ValueError, match=r"monitor='mask_iou' is not a recorded value; choose one of \[.*'mask_miou'"):
        fit(learner(dls), 1, 1e-3, cbs=SaveModelCallback(monitor='mask_iou'))

# --- 5. silent label damage -----------------------------------------------------------------------------------------
def test_leakage(synth):
    path, df = synth
    dup = pd.concat([df, df[~df.is_valid].head(2).assign(is_valid=True, colour='blue')], ignore_index=True)
    with pytest.raises(MTLDataError, match=r"2 image file\(s\) are both in the training and the validation set"): dls_of(path, dup)

def test_single_class(synth):
    path, df = synth
    with pytest.raises(MTLDataError, match="every labelled training row has the class 'red'"):
        dls_of(path, df.assign(colour='red'), [ClassificationTask('colour')])

def test_zero_area_box(synth):
    path, df = synth
    bad = df.copy(); r = bad.index[bad.x1.notna()][0]; bad.loc[r, 'x2'] = bad.loc[r, 'x1']
    with pytest.raises(MTLDataError, match=rf"1 row\(s\) have a box of zero width or height .*: row {r} "): dls_of(path, bad)

def test_16_bit_image(synth, tmp_path):
    path, df = synth
    arr = (np.arange(32*32).reshape(32, 32)*60).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path/'deep.png')
    one = df.iloc[:12].copy(); one['fn'] = str(tmp_path/'deep.png')
    one['fn'] = [f if i else str(tmp_path/'deep.png') for i, f in enumerate(df.fn.iloc[:12])]
    with pytest.raises(MTLDataError, match=r"has mode 'I;16' \(16-bit or float\): converting it to 8-bit RGB would saturate it"):
        dls_of(path, one, [ClassificationTask('colour')])

# --- 6. bad files found early -----------------------------------------------------------------------------------------
def test_every_bad_file_reported_together(synth, tmp_path):
    import shutil
    path, df = synth
    d = tmp_path/'d'; shutil.copytree(path, d)
    (d/df.fn[1]).write_bytes(b'not an image')
    data = (d/df.fn[2]).read_bytes(); (d/df.fn[2]).write_bytes(data[:len(data)//3])      # truncated
    m = df['mask'].dropna().index[0]
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(d/df['mask'][m])                # a code that does not exist
    with pytest.raises(MTLDataError, match=r"problem\(s\) with the files \(decoded\)") as e: dls_of(d, df, check='full')
    msg = str(e.value)
    assert f"fn='{df.fn[1]}'" in msg and f"fn='{df.fn[2]}'" in msg and 'values [7] outside the 4 codes' in msg
    with pytest.raises(MTLDataError, match=rf"row 1 \(fn='{df.fn[1]}'\): image .* cannot be read"): dls_of(d, df)   # fast: headers
    df2 = df.drop(index=[1, m])
    with pytest.raises(MTLDataError, match=rf"row 2 \(fn='{df.fn[2]}'"):
        dls = dls_of(d, df2, [ClassificationTask('colour')], check=None)
        for _ in dls.train: pass
        for _ in dls.valid: pass

# --- 7. left-overs and state ----------------------------------------------------------------------------------------
def test_fit_on_a_loaded_learner_says_it_has_no_data(synth, tmp_path):
    learn = learner(dls_of(*synth), path=tmp_path, weighting='dwa')
    learn.export('m.pkl')
    loaded = load_learner(tmp_path/'m.pkl')
    with pytest.raises(MTLTrainingError, match=r'no batch to train on.*learn.dls = MTLDataLoaders.from_df'): loaded.fit(1)
    assert len(loaded.weighting.history) == 0

def test_checkpoint_into_another_weighting_and_safetensors(synth, tmp_path):
    dls = dls_of(*synth)
    a = fit(learner(dls, weighting='dwa', path=tmp_path), 2, 1e-3)
    a.save('dwa'); a.save_weights('dwa')
    for w in (None, 'uncertainty'):
        b = learner(dls, weighting=w, path=tmp_path)
        with pytest.warns(UserWarning, match="weighting state"): b.load('dwa')
        assert torch.equal(b.model.body[0][0].weight, a.model.body[0][0].weight)
    c = learner(dls, weighting='dwa', path=tmp_path).load_weights('dwa')
    assert c.weighting.history.equals(a.weighting.history)
    for k, v in a.model.state_dict().items(): assert torch.equal(c.model.state_dict()[k].nan_to_num(-1), v.nan_to_num(-1)), k

def test_read_only_data_folder(synth, tmp_path, monkeypatch):
    path, df = synth
    monkeypatch.chdir(tmp_path)
    real = os.access
    monkeypatch.setattr(os, 'access', lambda p, mode: False if str(p) == str(path) else real(p, mode))
    with pytest.warns(UserWarning, match='is read-only: models'): learn = learner(dls_of(path, df))
    assert learn.path == tmp_path
    learn.save('x'); assert (tmp_path/'models'/'x.pth').exists()

# --- 8. messages -----------------------------------------------------------------------------------------------------
def test_mixed_label_types(synth):
    path, df = synth
    bad = df.copy().astype({'colour': object}); bad.loc[3, 'colour'] = 7
    with pytest.raises(MTLDataError, match=r"column 'colour' mixes numbers and text \(number in row 3"): dls_of(path, bad)

def test_sizes_bs_and_small_sets(synth, tmp_path):
    path, df = synth
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path/'small.png')
    odd = df.copy(); odd.loc[0, 'fn'] = str(tmp_path/'small.png'); odd.loc[0, ['mask', 'x1', 'y1', 'x2', 'y2']] = np.nan
    with pytest.raises(MTLDataError, match=r'2 different sizes .* pass `size=`'): dls_of(path, odd)
    assert dls_of(path, odd, size=32).one_batch()[0].shape[-2:] == (32, 32)
    with pytest.raises(MTLDataError, match='bs=1: batchnorm layers need at least 2'): dls_of(path, df, bs=1)
    with pytest.raises(MTLDataError, match=r'the training set has \d+ images, fewer than a batch of bs=128'): dls_of(path, df, bs=128, sampler='random')
    assert len(dls_of(path, df, bs=128).train) == 1        # the balanced default fills one batch, each image at least once

def test_big_endian_mask(synth, tmp_path):
    from fastai_mtl.transforms import MaskReader
    im = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint16)).convert('I;16B')
    assert np.asarray(MaskReader(codes=list('abc'))(im)).tolist() == [[0, 1], [2, 1]]

# --- 9. (unlabelled predictions: tests/test_losses.py) --- 10. safe weights, and tta ---------------------------------------
def test_tta(synth):
    learn = fit(learner(dls_of(*synth)), 1, 1e-3)
    plain, targs = learn.get_preds()
    same, _ = learn.tta(beta=0.)
    for a, b in zip(plain, same): assert torch.equal(a, b)
    tta, t2 = learn.tta()
    assert [p.shape for p in tta] == [p.shape for p in plain] and all(torch.equal(a.nan_to_num(-1), b.nan_to_num(-1)) for a, b in zip(targs, t2))
    seg, cls, box = learn.tasks
    b = torch.tensor([[-.8, -.2, .4, .9]])
    assert torch.allclose(box.hflip(box.hflip(b)), b) and torch.allclose(box.hflip(b), torch.tensor([[-.4, -.2, .8, .9]]))
    assert not torch.equal(tta[0], plain[0]) and torch.allclose(tta[1].sum(1), torch.ones(len(tta[1])))
    assert RegressionTask('x').hflip(torch.zeros(2, 1)) is None and RegressionTask('x', flip_invariant=True).hflip(torch.zeros(2, 1)) is not None
