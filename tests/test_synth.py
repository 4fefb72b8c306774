"Synthetic shapes: determinism, caching, missing targets, and that mask, labels and box agree with each other."
import os, time
import numpy as np, pandas as pd, pytest
from PIL import Image
from fastai.vision.core import PILImage, PILMask
import fastai_mtl.synth as synth
from fastai_mtl.core import is_missing, missing_mask
from fastai_mtl.synth import *

MISSING = {'mask': 0.7, 'shape': 0.1, 'colour': 0.5, 'box': 0.3}
TEXT_COLS = ['fn', 'mask', 'shape', 'colour']

@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    "A 200-image set and how long drawing it took"
    t = time.perf_counter()
    path, df = synth_shapes(200, missing=MISSING, path=tmp_path_factory.mktemp('synth')/'shapes')
    return path, df, time.perf_counter() - t

def test_columns_and_types(shapes):
    path, df, _ = shapes
    assert list(df.columns) == ['fn', 'mask', 'shape', 'colour', *BOX_COLS, 'is_valid']
    assert df.index.tolist() == list(range(200)) and df.is_valid.dtype == bool
    assert all(df[c].dtype == float for c in BOX_COLS) and all(df[c].dtype == object for c in TEXT_COLS)
    assert df.fn.iloc[12] == 'images/000012.png' and (path/df.fn.iloc[12]).is_file()
    assert set(df['shape'].dropna()) == set(SHAPES) and set(df['colour'].dropna()) == set(COLOURS)

def test_fast(shapes):
    print(f'200 images drawn in {shapes[2]:.2f}s')
    assert shapes[2] < 5

def test_missing_exact_and_independent(shapes):
    _, df, _ = shapes
    counts = {t: int(missing_mask(df[c]).sum()) for t, c in [('mask', 'mask'), ('shape', 'shape'), ('colour', 'colour'), ('box', 'x1')]}
    assert counts == {t: round(f*200) for t, f in MISSING.items()}
    assert (df[BOX_COLS].isna().sum(axis=1) % 4 == 0).all()  # a box is missing as a whole
    for c in ('mask', 'shape', 'colour'): assert df[c][missing_mask(df[c])].map(lambda v: v is None).all()
    both = (missing_mask(df['mask']) & missing_mask(df['colour'])).sum()
    assert 0 < both < 100  # drawn independently: neither disjoint nor nested
    assert df.is_valid.sum() == 40

def test_deterministic(shapes, tmp_path):
    path, df, _ = shapes
    p2, df2 = synth_shapes(200, missing=MISSING, path=tmp_path/'again')
    pd.testing.assert_frame_equal(df, df2)
    for sub in ('images', 'masks'):
        files = sorted(os.listdir(path/sub))
        assert files == sorted(os.listdir(p2/sub)) and len(files) == 200
        for f in files[::7]: assert (path/sub/f).read_bytes() == (p2/sub/f).read_bytes()
    assert (path/'labels.csv').read_bytes() == (p2/'labels.csv').read_bytes()
    _, df3 = synth_shapes(200, seed=1, missing=MISSING, path=tmp_path/'seed1')
    assert not df3[['shape', 'colour']].equals(df[['shape', 'colour']])

def test_image_i_does_not_depend_on_n(shapes, tmp_path):
    path, _, _ = shapes
    p, df = synth_shapes(10, path=tmp_path/'ten')
    assert (p/'images/000007.png').read_bytes() == (path/'images/000007.png').read_bytes()
    full = pd.read_csv(path/'labels.csv')
    assert df['shape'].tolist() == full['shape'].iloc[:10].tolist()

def test_targets_agree(shapes):
    path, _, _ = shapes
    full = pd.read_csv(path/'labels.csv')
    for _, r in full.iterrows():
        m = np.array(Image.open(path/r['mask']))
        assert m.dtype == np.uint8 and m.shape == (64, 64)
        assert set(np.unique(m)) == {0, SHAPE_CODES.index(r['shape'])}
        ys, xs = np.nonzero(m)
        assert (r.x1, r.y1, r.x2, r.y2) == (xs.min(), ys.min(), xs.max()+1, ys.max()+1)
        assert 0 <= r.x1 < r.x2 <= 64 and 0 <= r.y1 < r.y2 <= 64
        img = np.array(Image.open(path/r['fn']))
        assert img[m > 0].mean(0).argmax() == list(COLOURS).index(r['colour'])

def test_loads_with_fastai(shapes):
    path, df, _ = shapes
    r = df[~missing_mask(df['mask'])].iloc[0]
    img, msk = PILImage.create(path/r['fn']), PILMask.create(path/r['mask'])
    assert img.mode == 'RGB' and img.size == (64, 64) and msk.size == (64, 64)
    assert set(np.unique(np.array(msk))) <= {0, 1, 2, 3}

def test_reuses_existing(shapes):
    path, df, _ = shapes
    before = (path/'images/000000.png').stat().st_mtime_ns
    _, df2 = synth_shapes(200, missing=MISSING, path=path)
    assert (path/'images/000000.png').stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(df, df2)
    _, df3 = synth_shapes(200, valid_pct=0.5, path=path)  # split and missing only change the DataFrame
    assert df3.is_valid.sum() == 100 and not missing_mask(df3['mask']).any()

def test_default_path_and_readonly_home_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, 'fastai_path', lambda k: tmp_path/'fastai'/k)
    p, _ = synth_shapes(4, size=32)
    assert p.parent == tmp_path/'fastai'/'data'/'synth_shapes' and (p/'labels.csv').exists()
    def ro(k): raise PermissionError('read-only home')
    monkeypatch.setattr(synth, 'fastai_path', ro)
    monkeypatch.setattr(synth.tempfile, 'tempdir', str(tmp_path/'tmp'))
    p, df = synth_shapes(4, size=32)
    assert p.parent == tmp_path/'tmp'/'fastai_mtl'/'synth_shapes' and len(df) == 4
    assert not [f for f in p.parent.iterdir() if f.name.startswith('.')]  # no temporary folder left

def test_max_rotate(shapes, tmp_path):
    path, _, _ = shapes
    p, df = synth_shapes(8, max_rotate=180, path=tmp_path/'any')
    full = pd.read_csv(path/'labels.csv').iloc[:8]
    assert df['shape'].tolist() == full['shape'].tolist()  # the same draws, only the angles differ
    turned = [f for f in df.fn if (p/f).read_bytes() != (path/f).read_bytes()]
    assert len(turned) >= 4
    p0, _ = synth_shapes(8, max_rotate=0, path=tmp_path/'upright')
    squares = pd.read_csv(p0/'labels.csv').query("shape == 'square'")
    assert len(squares) >= 1
    for _, r in squares.iterrows():  # upright squares fill their box
        m = np.array(Image.open(p0/r['mask'])) > 0
        assert m.sum() == (r.x2-r.x1)*(r.y2-r.y1)

def test_partial(shapes):
    path, _, _ = shapes
    p, df = synth_partial(200, mask_pct=0.15, missing={'colour': 1.}, path=path)
    assert p == path and (~missing_mask(df['mask'])).sum() == 30
    assert missing_mask(df['colour']).all() and not missing_mask(df['shape']).any()

def test_drop_targets_generic():
    df = pd.DataFrame({'fn': list('abcdefgh'), 'n': range(8), 'lbl': list('xyxyxyxy')})
    d = drop_targets(df, {'n': 0.5, 'lbl': 0.25}, seed=3)
    assert d['n'].dtype == float and d['n'].isna().sum() == 4 and d['lbl'].map(is_missing).sum() == 2
    assert df['n'].dtype == np.int64  # input untouched
    pd.testing.assert_frame_equal(d, drop_targets(df, {'n': 0.5, 'lbl': 0.25}, seed=3))
    assert not drop_targets(df, {'n': 0.5}, seed=4)['n'].isna().equals(d['n'].isna())

def test_errors(shapes, tmp_path):
    path, _, _ = shapes
    with pytest.raises(ValueError, match='Unknown target'): synth_shapes(4, missing={'label': .5}, path=tmp_path/'a')
    with pytest.raises(ValueError, match='fraction'): synth_shapes(4, missing={'mask': -.1}, path=tmp_path/'a')
    with pytest.raises(ValueError, match='different synth_shapes dataset'): synth_shapes(20, path=path)
    (tmp_path/'mine').mkdir(); (tmp_path/'mine'/'x.txt').write_text('keep me')
    with pytest.raises(ValueError, match='not empty'): synth_shapes(4, path=tmp_path/'mine')
    assert (tmp_path/'mine'/'x.txt').read_text() == 'keep me'
