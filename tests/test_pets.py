"""`pets_df` on each quirk of the Oxford-IIIT Pet release: on a tiny fake release built here (always runs) and on the
real 3-breed subset (`pets_path`, skipped when absent)."""
import time, warnings
import xml.etree.ElementTree as ET
import numpy as np, pandas as pd, pytest
from PIL import Image
from fastai.vision.core import PILImage, PILMask
from fastai_mtl.core import MTLDataError, IGNORE_INDEX, is_missing, missing_mask
from fastai_mtl.pets import *

COLS = ['fn', 'breed', 'species', 'class_id', 'trimap', 'x1', 'y1', 'x2', 'y2', 'split', 'width', 'height', 'is_test']

def _voc(box=None, body=None):
    if body is None:
        body = '<object><name>pet</name><bndbox>' + ''.join(
            f'<{k}>{v}</{k}>' for k, v in zip(('xmin', 'ymin', 'xmax', 'ymax'), box)) + '</bndbox></object>'
    return f'<annotation><folder>OXIIIT</folder><size><width>40</width><height>30</height></size>{body}</annotation>'

def make_fake_release(root):
    "A 7-image release with every quirk of the real one, and a few more"
    im, ann = root/'images', root/'annotations'
    for d in (im, ann/'trimaps', ann/'xmls'): d.mkdir(parents=True)
    rgb = lambda w, h, c: Image.new('RGB', (w, h), c)
    rgb(40, 30, (200, 10, 10)).save(im/'Abyssinian_1.jpg', format='JPEG')           # plain JPEG, trainval, box
    rgb(20, 16, (0, 90, 0)).convert('P').save(im/'Abyssinian_2.jpg', format='GIF')  # GIF inside, trainval, box
    Image.new('RGBA', (24, 12), (0, 0, 200, 128)).save(im/'Bengal_3.jpg', format='PNG')  # RGBA PNG inside, test
    (im/'Bengal_3.mat').write_bytes(b'MATLAB 5.0 MAT-file')                          # stray .mat
    rgb(30, 20, (1, 2, 3)).save(im/'Bengal_6.jpg', format='JPEG')                  # trainval, malformed xml
    rgb(30, 20, (1, 2, 3)).save(im/'Bengal_7.jpg', format='JPEG')                  # trainval, xml without a box
    rgb(32, 32, (9, 9, 9)).save(im/'american_bulldog_4.jpg', format='JPEG')        # test, no xml
    rgb(16, 8, (5, 5, 5)).save(im/'great_pyrenees_5.jpg', format='JPEG')           # not in list.txt nor the splits
    (im/'._Abyssinian_1.jpg').write_bytes(b'\x00\x05\x16\x07')                    # macOS resource fork
    names = ['Abyssinian_1', 'Abyssinian_2', 'Bengal_3', 'Bengal_6', 'Bengal_7', 'american_bulldog_4', 'great_pyrenees_5']
    for n in names[:-1]:  # great_pyrenees_5 has no trimap
        Image.fromarray(np.full((4, 4), 2, np.uint8)).save(ann/'trimaps'/f'{n}.png')
    (ann/'xmls'/'Abyssinian_1.xml').write_text(_voc((1, 5, 10, 20)))
    (ann/'xmls'/'Abyssinian_2.xml').write_text(_voc((3, 1, 20, 16)))
    (ann/'xmls'/'Bengal_6.xml').write_text('<annotation><object><bndbox><xmin>1')
    (ann/'xmls'/'Bengal_7.xml').write_text(_voc(body='<object><name>cat</name></object>'))
    lines = {'Abyssinian_1': '1 1 1', 'Abyssinian_2': '1 1 1', 'Bengal_3': '6 1 2', 'Bengal_6': '6 1 2',
             'Bengal_7': '6 1 2', 'american_bulldog_4': '2 2 1', 'Abyssinian_99': '1 1 1'}  # _99: no image
    (ann/'list.txt').write_text('#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n\n'
                                + ''.join(f'{n} {v}\n' for n, v in lines.items()))
    split = lambda ns: ''.join(f'{n} {lines[n]}\n' for n in ns)
    (ann/'trainval.txt').write_text(split(['Abyssinian_1', 'Abyssinian_2', 'Bengal_6', 'Bengal_7']))
    (ann/'test.txt').write_text(split(['Bengal_3', 'american_bulldog_4', 'Abyssinian_99']))
    return root

@pytest.fixture
def fake(tmp_path):
    root = make_fake_release(tmp_path/'pets')
    with pytest.warns(UserWarning, match=r'2 head box\(es\) left missing') as rec: df = pets_df(root)
    return root, df.set_index('fn', drop=False), str(rec[0].message)

def test_fake_rows_and_columns(fake):
    _, df, _ = fake
    assert list(df.columns) == COLS and df.fn.tolist() == sorted(df.fn)
    assert len(df) == 7 and not df.fn.str.contains(r'\.mat$|/\._').any()  # stray .mat, resource fork ignored
    assert 'images/Abyssinian_99.jpg' not in df.index  # listed, but no image
    assert df.class_id.dtype == 'Int64' and df.width.dtype == np.int64 and df.is_test.dtype == bool

def test_fake_gif_and_rgba_png(fake):
    root, df, _ = fake
    for fn, size in [('images/Abyssinian_2.jpg', (20, 16)), ('images/Bengal_3.jpg', (24, 12))]:
        assert fn in df.index and (df.loc[fn, 'width'], df.loc[fn, 'height']) == size
        im = PILImage.create(root/fn)
        assert im.mode == 'RGB' and im.size == size and np.array(im).shape == (size[1], size[0], 3)
    assert Image.open(root/'images/Abyssinian_2.jpg').format == 'GIF'
    assert df.loc['images/Abyssinian_2.jpg', ['x1', 'y1', 'x2', 'y2']].tolist() == [2., 0., 20., 16.]

def test_fake_not_in_list(fake):
    _, df, _ = fake
    r = df.loc['images/great_pyrenees_5.jpg']
    assert (r.breed, r.species, r.split, r.is_test) == ('great_pyrenees', 'dog', None, False)
    assert r.class_id is pd.NA and r.trimap is None and np.isnan(r.x1)

def test_fake_labels_and_split(fake):
    _, df, _ = fake
    assert df.loc['images/Bengal_3.jpg', ['breed', 'species', 'class_id', 'split']].tolist() == ['Bengal', 'cat', 6, 'test']
    assert df.loc['images/american_bulldog_4.jpg', ['breed', 'species', 'class_id']].tolist() == ['american_bulldog', 'dog', 2]
    assert df.is_test.sum() == 2 and (df.split == 'trainval').sum() == 4
    assert df.loc['images/Abyssinian_1.jpg', 'trimap'] == 'annotations/trimaps/Abyssinian_1.png'

def test_fake_boxes(fake):
    _, df, msg = fake
    assert df.loc['images/Abyssinian_1.jpg', ['x1', 'y1', 'x2', 'y2']].tolist() == [0., 4., 10., 20.]  # VOC 1-based
    assert np.isnan(df.loc['images/american_bulldog_4.jpg', 'x1'])  # test image: no xml
    assert df.loc[['images/Bengal_6.jpg', 'images/Bengal_7.jpg'], ['x1', 'y1', 'x2', 'y2']].isna().all().all()
    assert 'Bengal_6.xml' in msg and 'Bengal_7.xml' in msg
    assert df.x1.notna().sum() == 2

def test_fake_errors(fake, tmp_path):
    root, _, _ = fake
    with pytest.raises(MTLDataError, match='no images/ folder'): pets_df(tmp_path/'nothing')
    with pytest.raises(MTLDataError, match='no images/ folder'): pets_df(root/'annotations')
    (tmp_path/'bare'/'images').mkdir(parents=True)
    Image.new('RGB', (8, 8)).save(tmp_path/'bare'/'images'/'Bengal_1.jpg')
    with pytest.warns(UserWarning, match='no annotations/ folder'): df = pets_df(tmp_path/'bare')
    assert df[['breed', 'species', 'split']].iloc[0].tolist() == ['Bengal', 'cat', None]

def test_fake_no_sizes(fake):
    root, df, _ = fake
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        d = pets_df(root, sizes=False)
    assert 'width' not in d.columns
    pd.testing.assert_frame_equal(d, df.reset_index(drop=True).drop(columns=['width', 'height']))

def test_trimap_code_map():
    assert set(TRIMAP_VALUES) == {1, 2, 3} and TRIMAP_CODE_MAP[3] == IGNORE_INDEX
    assert [TRIMAP_CODES[TRIMAP_CODE_MAP[v]] for v in (1, 2)] == [TRIMAP_VALUES[1], TRIMAP_VALUES[2]]

# --- the real 3-breed subset -------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def real(pets_path):
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the real subset has no malformed XML
        df = pets_df(pets_path)
    return pets_path, df, time.perf_counter() - t

def test_real_counts(real):
    _, df, secs = real
    print(f'pets_df on {len(df)} images: {secs:.2f}s')
    assert secs < 3
    assert list(df.columns) == COLS and len(df) == 600 and df.fn.is_unique and df.fn.tolist() == sorted(df.fn)
    assert df.breed.value_counts().to_dict() == {'Abyssinian': 200, 'Bengal': 200, 'american_bulldog': 200}
    assert df.species.value_counts().to_dict() == {'cat': 400, 'dog': 200}
    assert df.split.value_counts().to_dict() == {'trainval': 300, 'test': 298}
    assert not missing_mask(df.trimap).any()

def test_real_odd_rows(real):
    path, df, _ = real
    odd = df[df.class_id.isna()]
    assert odd.fn.tolist() == ['images/Abyssinian_34.jpg', 'images/Abyssinian_82.jpg']
    assert odd.species.tolist() == ['cat', 'cat'] and odd.split.map(is_missing).all()
    for fn, fmt in [('images/Abyssinian_34.jpg', 'GIF'), ('images/Abyssinian_5.jpg', 'PNG')]:
        assert Image.open(path/fn).format == fmt
        im = PILImage.create(path/fn)
        r = df[df.fn == fn].iloc[0]
        assert im.mode == 'RGB' and im.size == (r.width, r.height)
    assert not any(f.endswith('.mat') for f in df.fn) and any(p.suffix == '.mat' for p in (path/'images').iterdir())

def test_real_boxes(real):
    path, df, _ = real
    b = df[df.x1.notna()]
    assert len(b) == 296 and (b.split == 'trainval').all()
    assert ((b.x1 >= 0) & (b.y1 >= 0) & (b.x2 <= b.width) & (b.y2 <= b.height) & (b.x2 > b.x1) & (b.y2 > b.y1)).all()
    for _, r in b.iloc[::50].iterrows():  # against the raw XML: 1-based inclusive -> 0-based continuous
        bb = ET.parse(path/'annotations'/'xmls'/(r.fn[7:-4] + '.xml')).getroot().find('object/bndbox')
        xmin, ymin, xmax, ymax = (float(bb.find(k).text) for k in ('xmin', 'ymin', 'xmax', 'ymax'))
        assert (r.x1, r.y1, r.x2, r.y2) == (xmin-1, ymin-1, xmax, ymax)

def test_real_trimap(real):
    path, df, _ = real
    r = df.iloc[3]
    tm = np.array(PILMask.create(path/r.trimap))
    assert tm.shape == (r.height, r.width) and set(np.unique(tm)) <= set(TRIMAP_VALUES)
