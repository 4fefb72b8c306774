"The cached data path: the same batches as decoding; another store when rows, files or transforms change (none removed); damaged stores rebuilt; clean-up; sentinels kept, workers, DDP"
import os, random, shutil, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from fastai.vision.all import RandomResizedCrop, Resize, aug_transforms, load_learner
import warnings
from fastai.vision.all import Transform, TensorImage
from fastai_mtl.all import (MTLDataLoaders, MTLDataError, SHAPE_CODES, BOX_COLS, synth_shapes, cache_items, cache_key,
                            mtl_learner, demo_body, clean_cache)

KW = dict(mask_col='mask', codes=SHAPE_CODES, label_col=['shape', 'colour'], box_cols=BOX_COLS, valid_col='is_valid',
          size=32, bs=8, num_workers=0)

@pytest.fixture
def data(tmp_path):
    "A copy of a small synthetic set (so files can be changed), missing targets of every kind"
    src, df = synth_shapes(48, size=40, seed=1, missing={'mask': 0.5, 'shape': 0.25, 'colour': 0.2, 'box': 0.3})
    path = tmp_path/'data'; shutil.copytree(src, path)
    return path, df, tmp_path/'cache'

def same(a, b) -> bool:
    if not isinstance(a, torch.Tensor): return type(a) is type(b) and str(a) == str(b)
    return type(a) is type(b) and a.shape == b.shape and torch.equal(a.nan_to_num(-9.), b.nan_to_num(-9.))

def batches(dl, n=3, seed=0):
    dl.rng = random.Random(seed)
    it = iter(dl)
    return [next(it) for _ in range(n)]

@pytest.mark.parametrize('workers', [0, 2])
def test_same_batches(data, workers):
    path, df, store = data
    plain = MTLDataLoaders.from_df(df, path, **KW)
    cached = MTLDataLoaders.from_df(df, path, cache=store, **{**KW, 'num_workers': workers})
    assert cached.train.cache is not None and cached.valid.cache is not None and plain.train.cache is None
    for b, c in zip(batches(plain.train), batches(cached.train)): assert all(same(x, y) for x, y in zip(b, c))
    for b, c in zip(plain.valid, cached.valid): assert all(same(x, y) for x, y in zip(b, c))
    # the items' metadata (the box's image size, for decoding) and the decoded batches are those of the plain path
    assert cached.valid.one_batch()[-1].img_size == plain.valid.one_batch()[-1].img_size
    dp, dc = plain.valid.decode_batch(plain.valid.one_batch()), cached.valid.decode_batch(cached.valid.one_batch())
    assert all(same(x, y) for s, t in zip(dp, dc) for x, y in zip(s, t))

def test_sentinels_kept(data):
    path, df, store = data
    cached = MTLDataLoaders.from_df(df, path, cache=store, **KW)
    items = cached.valid.items
    for k, t in enumerate(cached.tasks):
        held = np.stack([t.has_target(cached.valid.cache[i][k + 1][None]).numpy()[0] for i in range(len(items))])
        np.testing.assert_array_equal(held, t.rows_with_target(items).values)
    assert (~cached.tasks[0].rows_with_target(items)).any()   # the check above saw missing masks

def test_reopen_and_invalidation(data):
    path, df, store = data
    first = MTLDataLoaders.from_df(df, path, cache=store, **KW).train.cache.folder
    again = MTLDataLoaders.from_df(df, path, cache=store, **KW)
    assert again.train.cache.folder == first                             # same rows, files, transforms: reopened
    # a changed DataFrame (one shape label removed)
    df2 = df.copy(); df2.loc[df2.index[~df2.is_valid][0], 'shape'] = None
    new = MTLDataLoaders.from_df(df2, path, cache=store, **KW).train.cache.folder
    assert new != first and first.exists()                               # another store; the first one stays (others may use it)
    # a changed file (an image rewritten: another size and time)
    fn = df2.fn[~df2.is_valid].iloc[0]
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(path/fn)
    os.utime(path/fn, ns=(1, 1))
    d3 = MTLDataLoaders.from_df(df2, path, cache=store, **KW)
    assert d3.train.cache.folder != new
    i = list(d3.train.items.fn).index(fn)
    assert d3.train.cache[i][0].sum() == 0                               # the new file's pixels, not the old ones
    # changed item transforms
    assert MTLDataLoaders.from_df(df2, path, cache=store, **{**KW, 'size': 24}).train.cache.folder != d3.train.cache.folder
    # nothing was written beside the images
    assert not [p for p in path.rglob('*') if p.is_file() and p.suffix not in ('.png', '.csv', '.json')]

def test_key_is_the_same_in_another_process(data):
    path, df, store = data
    dls = MTLDataLoaders.from_df(df, path, cache=store, **KW)
    df.to_pickle(store/'df.pkl')
    code = (f"import pandas as pd; from fastai_mtl.all import *; df = pd.read_pickle({str(store/'df.pkl')!r}); "
            f"d = MTLDataLoaders.from_df(df, {str(path)!r}, **{KW!r}); "
            f"print(cache_key(d.train, d.path, ['fn', 'mask', 'shape', 'colour', *BOX_COLS]))")
    env = {**os.environ, 'PYTHONHASHSEED': '123'}
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == dls.train.cache.folder.name

def test_random_item_tfms_refused(data):
    path, df, store = data
    with pytest.raises(MTLDataError, match=r'RandomResizedCrop are random .*batch_tfms'):
        MTLDataLoaders.from_df(df, path, cache=store, **{**KW, 'size': None, 'item_tfms': RandomResizedCrop(32)})
    with pytest.raises(MTLDataError, match=r'Resize are random'):    # crops at random on the training set
        MTLDataLoaders.from_df(df, path, cache=store, **{**KW, 'size': None, 'item_tfms': Resize(32)})
    # batch augmentation is fine: it runs on each batch, after the cache
    MTLDataLoaders.from_df(df, path, cache=store, **{**KW, 'batch_tfms': aug_transforms()}).train.one_batch()

def test_items_of_different_sizes_named(tmp_path):
    (tmp_path/'i').mkdir()
    for k, s in enumerate([16, 16, 16, 20, 16, 16]):
        Image.fromarray(np.zeros((s, s, 3), np.uint8)).save(tmp_path/'i'/f'{k}.png')
    df = pd.DataFrame({'fn': [f'i/{k}.png' for k in range(6)], 'y': list('ababab'), 'is_valid': [False]*4 + [True]*2})
    with pytest.raises(MTLDataError, match=r"i/3\.png.*\(3, 20, 20\).*one size"):
        MTLDataLoaders.from_df(df, tmp_path, label_col='y', valid_col='is_valid', bs=2, check=None, num_workers=0,
                               cache=tmp_path/'c')

def test_other_ranks_wait_for_rank_0(data, monkeypatch):
    path, df, store = data
    built = MTLDataLoaders.from_df(df, path, cache=store, **KW)
    monkeypatch.setenv('WORLD_SIZE', '2'); monkeypatch.setenv('RANK', '1'); monkeypatch.setenv('LOCAL_RANK', '1')
    # rank 1 finds what rank 0 built ...
    assert MTLDataLoaders.from_df(df, path, cache=store, **KW).train.cache.folder == built.train.cache.folder
    # ... and never builds one itself: it waits, then says what it waited for
    plain = MTLDataLoaders.from_df(df, path, **{**KW, 'size': 24})
    with pytest.raises(MTLDataError, match='process 0 to build the cache'): cache_items(plain, store, timeout=1)

def test_learn_export_and_test_dl(data, tmp_path):
    path, df, store = data
    dls = MTLDataLoaders.from_df(df, path, cache=store, **KW)
    learn = mtl_learner(dls, demo_body(widths=(8, 16)), pretrained=False, path=tmp_path)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert dls.test_dl(df.iloc[:3]).cache is None                      # other items: decoded, never read from the cache
    learn.export('m.pkl')
    res = load_learner(tmp_path/'m.pkl').predict(path/df.fn[0])
    assert set(res.keys()) == {'mask', 'shape', 'colour', 'box'}

def _rebuilt(fn):
    "`fn()`, and whether it warned that a store was rebuilt"
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        res = fn()
    return res, [str(w.message) for w in ws if 'rebuilding it' in str(w.message)]

@pytest.mark.parametrize('damage', ['truncate', 'random bytes', 'no metadata', 'no array'])
def test_a_damaged_store_is_rebuilt(data, damage):
    "Checked when opened (sizes, checksums), rebuilt with a warning naming it; never read damaged, never blamed on a data row"
    path, df, store = data
    first = MTLDataLoaders.from_df(df, path, cache=store, **KW)
    folder, ref = first.train.cache.folder, first.train.cache[2]
    f = folder/'0.npy'
    if damage == 'truncate':
        with open(f, 'r+b') as fh: fh.truncate(f.stat().st_size - 100)
    elif damage == 'random bytes':
        b = bytearray(f.read_bytes()); b[-500:-100] = os.urandom(400); f.write_bytes(bytes(b))
        st = f.stat(); os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))   # a new time: this process checks again
    elif damage == 'no metadata': (folder/'meta.json').unlink()
    else: f.unlink()
    again, warned = _rebuilt(lambda: MTLDataLoaders.from_df(df, path, cache=store, **KW))
    assert len(warned) == 1 and str(folder) in warned[0], warned
    assert again.train.cache.folder == folder and all(same(x, y) for x, y in zip(again.train.cache[2], ref))

def test_unwritable_cache_folder_named(data, tmp_path):
    path, df, _ = data
    ro = tmp_path/'ro'; ro.mkdir(); ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK): pytest.skip('running as a user that can write anywhere')
        with pytest.raises(MTLDataError, match=r"cache folder .*ro.*\(`cache='.*ro'`\) cannot be written.*FASTAI_MTL_CACHE"):
            MTLDataLoaders.from_df(df, path, cache=ro, **KW)
    finally: ro.chmod(0o700)

def test_unwritable_cache_folder_named_as_root(data, tmp_path, monkeypatch):
    "The same message where permissions cannot be taken away (root): the probe write fails"
    path, df, _ = data
    import fastai_mtl.cache as C
    real = Path.touch
    def touch(self, *a, **k):
        if self.name.startswith('.probe-'): raise PermissionError(13, 'Permission denied')
        return real(self, *a, **k)
    monkeypatch.setattr(Path, 'touch', touch)
    with pytest.raises(MTLDataError, match=r"cache folder .* cannot be written \(PermissionError.*pass `cache=`"):
        MTLDataLoaders.from_df(df, path, cache=tmp_path/'c2', **KW)

def test_edited_transform_code_gives_another_store(data):
    "An item transform of your own whose code changed (its pickle the same) does not reuse the old items"
    path, df, store = data
    class Brighter(Transform):
        order = 5
        def encodes(self, x:TensorImage): return x
    a = MTLDataLoaders.from_df(df, path, cache=store, **{**KW, 'item_tfms': None, 'size': 32}).train.cache.folder
    def redefined():
        class Brighter(Transform):
            order = 5
            def encodes(self, x:TensorImage): return x + 0
        return Brighter
    from fastai.vision.all import Resize
    k1 = cache_key(MTLDataLoaders.from_df(df, path, **{**KW, 'size': None, 'item_tfms': [Resize(32, method='squish'), Brighter()]}).train, path, ['fn'])
    k2 = cache_key(MTLDataLoaders.from_df(df, path, **{**KW, 'size': None, 'item_tfms': [Resize(32, method='squish'), redefined()()]}).train, path, ['fn'])
    assert k1 != k2 and a.exists()

def _same_size_rewrite(f:Path):
    "Other pixels in a valid PNG of exactly the old number of bytes (a text chunk pads it)"
    from PIL.PngImagePlugin import PngInfo
    size, im = f.stat().st_size, np.asarray(Image.open(f)).copy()
    im[:] = im[0, 0]                                           # one colour: compresses to far fewer bytes
    Image.fromarray(im).save(f)
    pad = size - f.stat().st_size - 12 - len('p') - 1        # a tEXt chunk: length, type, 'p\0' + text, CRC
    info = PngInfo(); info.add_text('p', 'x'*pad)
    Image.fromarray(im).save(f, pnginfo=info)

def test_same_size_and_time_needs_the_hash_check(data):
    "A file rewritten with its old size and time (`cp -p`, `rsync -a`): 'stat' cannot see it, `cache_check='hash'` does"
    path, df, store = data
    fn = df.fn[~df.is_valid].iloc[0]
    d1 = MTLDataLoaders.from_df(df, path, cache=store, cache_check='hash', **KW)
    st = os.stat(path/fn)
    _same_size_rewrite(path/fn)
    assert os.stat(path/fn).st_size == st.st_size
    os.utime(path/fn, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert MTLDataLoaders.from_df(df, path, cache=store, **KW).train.cache.folder.exists()
    d2 = MTLDataLoaders.from_df(df, path, cache=store, cache_check='hash', **KW)
    assert d2.train.cache.folder != d1.train.cache.folder
    with pytest.raises(ValueError, match="cache_check must be 'stat'"): MTLDataLoaders.from_df(df, path, cache=store, cache_check='md5', **KW)

def test_clean_up_keeps_held_stores_and_the_newest(data, tmp_path):
    "Over the size bound, the least recently used stores that no running process holds go; held ones stay"
    path, df, store = data
    folders = [MTLDataLoaders.from_df(df, path, cache=store, **{**KW, 'size': s}).train.cache.folder for s in (24, 28, 32)]
    for f in folders[:2]: shutil.rmtree(f/'holders')                    # as if their processes had exited
    (folders[0]/'holders').mkdir(); (folders[0]/'holders'/f'{os.uname().nodename}-{2**22 + 7}').touch()   # a dead pid
    removed = clean_cache(store, max_gb=0)
    assert set(removed) == set(folders[:2]) | {f.parent/f.name for f in removed}                         # not the one held
    assert not folders[0].exists() and not folders[1].exists() and folders[2].exists()
