"Issue 3: multi-task data with missing targets: the pipeline, the sentinels, the samplers, and bad input."
import shutil, warnings
import numpy as np, pandas as pd, pytest, torch
from pathlib import Path
from PIL import Image
from fastai.vision.all import (Resize, RandomResizedCrop, aug_transforms, ResizeMethod, PadMode, TensorBBox,
                               TensorImage, TensorCategory, DataBlock, ImageBlock, ColReader, ColSplitter, Flip, Rotate,
                               Zoom, Warp)
from fastai_mtl.core import IGNORE_INDEX, MISSING_LABEL, MTLDataError
from fastai_mtl.transforms import TensorMTLMask
from fastai_mtl.tasks import SegmentationTask, ClassificationTask, BoxTask
from fastai_mtl.loader import MTLDataLoader, TaskBatchSampler, BalancedSampler, TaskEpochSampler
from fastai_mtl.data import MTLDataLoaders
from fastai_mtl.synth import synth_shapes, SHAPE_CODES

def _tasks(): return [SegmentationTask('mask', SHAPE_CODES), ClassificationTask('shape'), BoxTask()]

@pytest.fixture(scope='module')
def synth():
    return synth_shapes(48, size=32, seed=3, missing={'mask': 0.5, 'shape': 0.25, 'box': 0.4})

@pytest.fixture
def synth_copy(synth, tmp_path):
    "A private copy of the synthetic set, to damage"
    path, df = synth
    shutil.copytree(path, tmp_path/'d')
    return tmp_path/'d', df.copy()

def dls_of(path, df, tasks=None, **kw):
    kw = {'valid_col': 'is_valid', 'bs': 8, 'num_workers': 0, **kw}
    return MTLDataLoaders.from_df(df, path, 'fn', tasks or _tasks(), **kw)

def all_batches(dl):
    return list(dl)

# ---------------------------------------------------------------------------------------------------------------
# Sentinels through the pipeline
def test_batch_layout_and_sentinels(synth):
    path, df = synth
    dls = dls_of(path, df)
    for b in all_batches(dls.valid):
        img, m, lbl, box = b
        assert isinstance(img, TensorImage) and isinstance(m, TensorMTLMask) and isinstance(lbl, TensorCategory)
        assert isinstance(box, TensorBBox) and box.shape[1:] == (1, 4)
    rows = dls.valid.items
    m = torch.cat([b[1] for b in dls.valid]); lbl = torch.cat([b[2] for b in dls.valid]); box = torch.cat([b[3] for b in dls.valid])
    has_mask = rows['mask'].notna().values
    assert (m[~torch.tensor(has_mask)] == IGNORE_INDEX).all()
    assert ((m[torch.tensor(has_mask)] < len(SHAPE_CODES)) | (m[torch.tensor(has_mask)] == IGNORE_INDEX)).all()
    assert (m[torch.tensor(has_mask)] != IGNORE_INDEX).flatten(1).any(1).all()  # present masks keep labelled pixels
    assert ((lbl == MISSING_LABEL).numpy() == rows['shape'].isna().values).all()
    assert (box.isnan().view(-1, 4).all(1).numpy() == rows['x1'].isna().values).all()

def _aligned_set(tmp_path, n=12, size=40):
    "Images whose grey level is 60 * mask code, so alignment of image and mask can be checked after any transform"
    rng = np.random.default_rng(0)
    (tmp_path/'i').mkdir(); (tmp_path/'m').mkdir()
    rows = []
    for i in range(n):
        m = np.zeros((size, size + 8), np.uint8)
        x1, y1 = rng.integers(2, 14, 2); x2, y2 = x1 + rng.integers(10, 24), y1 + rng.integers(10, 22)
        m[y1:y2, x1:x2] = 1 + i % 3
        Image.fromarray(np.repeat((m*60)[..., None], 3, -1)).save(tmp_path/'i'/f'{i}.png')
        Image.fromarray(m).save(tmp_path/'m'/f'{i}.png')
        miss = i % 4 == 0
        rows.append(dict(fn=f'i/{i}.png', mask=None if miss else f'm/{i}.png', x1=None if miss else x1, y1=None if miss else y1,
                         x2=None if miss else x2, y2=None if miss else y2, is_valid=False))
    return pd.DataFrame(rows)

TFMS = {
    'resize_crop': dict(item_tfms=Resize(32)),
    'resize_squish': dict(item_tfms=Resize(32, method=ResizeMethod.Squish)),
    'resize_pad_zeros': dict(item_tfms=Resize(32, method=ResizeMethod.Pad, pad_mode=PadMode.Zeros)),
    'random_resized_crop': dict(item_tfms=RandomResizedCrop(32, min_scale=0.35)),
    'flip': dict(item_tfms=Resize(32, method='squish'), batch_tfms=[Flip(p=1.)]),
    'rotate_zeros': dict(item_tfms=Resize(32, method='squish'), batch_tfms=[Rotate(max_deg=40, p=1., pad_mode=PadMode.Zeros)]),
    'zoom': dict(item_tfms=Resize(32, method='squish'), batch_tfms=[Zoom(min_zoom=1.2, max_zoom=1.6, p=1.)]),
    'zoom_out_zeros': dict(item_tfms=Resize(32, method='squish'), batch_tfms=[Zoom(min_zoom=0.6, max_zoom=0.8, p=1., pad_mode=PadMode.Zeros)]),
    'warp_zeros': dict(item_tfms=Resize(32, method='squish'), batch_tfms=[Warp(magnitude=0.3, p=1., pad_mode=PadMode.Zeros)]),
    'aug_transforms_zeros': dict(item_tfms=Resize(32, method='squish'),
                                 batch_tfms=aug_transforms(max_rotate=30, max_zoom=1.4, max_warp=0.3, p_affine=1., pad_mode='zeros')),
    # fastai's default: reflection padding mirrors the object into the border, in the image *and* the mask; the box
    # keeps the original object only, so it is not checked against the mask's extent there
    'aug_transforms_reflection': dict(item_tfms=Resize(32, method='squish'),
                                      batch_tfms=aug_transforms(max_rotate=30, max_zoom=1.4, max_warp=0.3, p_affine=1.)),
}

@pytest.mark.parametrize('name', list(TFMS))
def test_transforms_keep_targets_aligned(name, tmp_path):
    df = _aligned_set(tmp_path)
    tasks = [SegmentationTask('mask', ['bg', 'a', 'b', 'c']), BoxTask()]
    dls = MTLDataLoaders.from_df(df, tmp_path, 'fn', tasks, valid_pct=0., bs=12, num_workers=0, seed=0, **TFMS[name])
    dls.train.shuffle = False  # in the order of `dls.train.items`, to know which targets are missing
    img, m, box = dls.train.one_batch()
    missing = torch.tensor(dls.train.items['mask'].isna().values)
    # missing targets stay missing
    assert (m[missing] == IGNORE_INDEX).all(), 'a missing mask got labelled pixels'
    assert box[missing].isnan().all(), 'a missing box got coordinates'
    # present masks: codes or IGNORE only; the image's grey level agrees with the mask wherever it is labelled
    plain = lambda t: t.as_subclass(torch.Tensor)
    pm, pimg = plain(m[~missing]), plain(img[~missing][:, 0])*255/60
    assert ((pm < 4) | (pm == IGNORE_INDEX)).all()
    lab = pm != IGNORE_INDEX
    agree = ((pimg.round() == pm) & lab).sum() / lab.sum()
    assert agree > 0.9, f'image and mask disagree on {1-agree:.1%} of the labelled pixels'
    # present boxes lie in the image (or became missing) and contain the object's pixels of the mask
    pb = plain(box[~missing]).view(-1, 4)
    ok = ~pb.isnan().any(1)
    assert ((pb[ok] >= -1) & (pb[ok] <= 1)).all()
    if 'reflection' in name: return
    for mm, bb in zip(pm[ok], pb[ok]):
        ys, xs = torch.nonzero((mm > 0) & (mm != IGNORE_INDEX), as_tuple=True)
        if not len(xs): continue
        sz = mm.shape[-1]
        px = (bb + 1) * sz / 2
        tol = 1.5
        assert xs.min() >= px[0] - tol and xs.max() + 1 <= px[2] + tol and ys.min() >= px[1] - tol and ys.max() + 1 <= px[3] + tol

def test_padding_is_ignored_not_background(tmp_path):
    df = _aligned_set(tmp_path)
    tasks = [SegmentationTask('mask', ['bg', 'a', 'b', 'c'])]
    dls = MTLDataLoaders.from_df(df, tmp_path, 'fn', tasks, valid_pct=0., bs=12, num_workers=0,
                                 item_tfms=Resize(32, method=ResizeMethod.Pad, pad_mode=PadMode.Zeros))
    dls.train.shuffle = False
    _, m = dls.train.one_batch()
    present = m[torch.tensor(dls.train.items['mask'].notna().values)]
    # 48x40 images padded to a square: 8 of 48 rows (2.7 of 32 after resizing) come from outside the image
    assert ((present == IGNORE_INDEX).all(-1).sum(-1) >= 2).all()
    assert (present != IGNORE_INDEX).flatten(1).any(1).all()

def test_box_leaving_the_crop_is_clipped_or_missing(synth):
    from fastai_mtl.transforms import ClipBoxes
    b = TensorBBox(torch.tensor([[[-1.5, -0.2, -0.5, 0.4]], [[1.1, 0., 1.3, 0.2]]]))
    c = ClipBoxes()(b)
    assert torch.equal(c[0], torch.tensor([[-1., -0.2, -0.5, 0.4]])) and c[1].isnan().all()

# ---------------------------------------------------------------------------------------------------------------
# Samplers through from_df
def test_task_homogeneous_batches(synth):
    path, df = synth
    dls = dls_of(path, df, sampler=TaskBatchSampler())
    tasks = dls.tasks
    batches = list(dls.train)
    assert len(batches) == len(dls.train)
    for b, t in zip(batches, dls.train.sampler.batch_tasks):
        assert tasks[t].has_target(b[1 + t]).all(), f'a batch for {tasks[t].name} holds a sample without it'
    assert dls.train.sampler.batch_tasks[:3] == [0, 1, 2]
    assert len(dls.valid) == int(np.ceil(df.is_valid.sum() / 8))  # validation: every sample, in order

def test_balanced_batches(synth):
    path, df = synth
    dls = dls_of(path, df, sampler=BalancedSampler(min_share={'mask': 0.5}))
    seg = dls.tasks[0]
    for b in dls.train: assert seg.has_target(b[1]).sum() >= 4

def test_task_epoch_sampler(synth):
    path, df = synth
    dls = dls_of(path, df, sampler=TaskEpochSampler(task='shape'))
    for b in dls.train: assert (b[2] != MISSING_LABEL).all()
    assert len(dls.train) == dls.train.items['shape'].notna().sum() // 8

def test_sampler_by_name(synth):
    path, df = synth
    assert isinstance(dls_of(path, df, sampler='task').train.sampler, TaskBatchSampler)
    with pytest.raises(ValueError, match='unknown sampler'): dls_of(path, df, sampler='nope')

# ---------------------------------------------------------------------------------------------------------------
# Routes and datasets
def test_plain_datablock_route(synth):
    path, df = synth
    tasks = _tasks()
    dblock = DataBlock(blocks=(ImageBlock, *[t.block for t in tasks]), n_inp=1,
                       getters=[ColReader('fn', pref=path), *[t.getter(path) for t in tasks]], splitter=ColSplitter('is_valid'))
    dls = dblock.dataloaders(df, bs=8, num_workers=0)
    assert isinstance(dls.train, MTLDataLoader) and list(dls.train.tasks) == tasks
    assert len(dls.one_batch()) == 4

def test_shortcut_arguments(synth):
    path, df = synth
    dls = MTLDataLoaders.from_df(df, path, 'fn', mask_col='mask', codes=SHAPE_CODES, label_col=['shape', 'colour'],
                                 box_cols=['x1', 'y1', 'x2', 'y2'], valid_col='is_valid', bs=8, num_workers=0)
    assert [t.name for t in dls.tasks] == ['mask', 'shape', 'colour', 'box']
    assert list(dls.c) == [4, 3, 3, 4]

def test_two_classification_tasks_on_disjoint_images(synth):
    "Task A and task B labelled on different images"
    path, df = synth
    df = df.copy()
    half = np.arange(len(df)) % 2 == 0
    df.loc[half, 'colour'] = None; df.loc[~half, 'shape'] = None
    dls = dls_of(path, df, tasks=[ClassificationTask('shape'), ClassificationTask('colour')])
    _, a, b = dls.valid.one_batch()
    assert not ((a != MISSING_LABEL) & (b != MISSING_LABEL)).any()
    assert (a != MISSING_LABEL).any() and (b != MISSING_LABEL).any()

def test_show_batch_runs_and_marks_missing(synth):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    path, df = synth
    dls = dls_of(path, df)
    dls.valid.show_batch(max_n=8)
    titles = [ax.get_title(loc='left') for ax in plt.gcf().axes]
    assert any('mask: missing' in t for t in titles) and any('box: missing' in t for t in titles)
    plt.close('all')

@pytest.mark.pets
def test_pets_through_from_df(pets_path):
    from fastai_mtl.pets import pets_df, TRIMAP_CODES, TRIMAP_CODE_MAP
    df = pets_df(pets_path)
    tasks = [SegmentationTask('trimap', TRIMAP_CODES, code_map=TRIMAP_CODE_MAP), ClassificationTask('breed'),
             ClassificationTask('species'), BoxTask(name='head')]
    dls = MTLDataLoaders.from_df(df, pets_path, 'fn', tasks, valid_col='is_test', size=64, bs=16, num_workers=0)
    img, m, breed, species, head = dls.valid.one_batch()
    assert img.shape == (16, 3, 64, 64) and m.shape == (16, 64, 64)
    assert set(m.unique().tolist()) <= {0, 1, IGNORE_INDEX}
    assert head.isnan().view(-1, 4).all(1).all()        # the official test half has no head boxes
    _, _, _, _, head = dls.train.one_batch()
    assert (~head.isnan().view(-1, 4).any(1)).any()
    odd = df[df.fn.isin(['images/Abyssinian_34.jpg', 'images/Abyssinian_5.jpg'])]
    assert len(odd) == 2
    for i in odd.index:  # the GIF and the RGBA PNG load as RGB through the pipeline
        dl = dls.train if i in dls.train.items.index else dls.valid
        x = dl.do_item(list(dl.items.index).index(i))[0]
        assert x.shape[0] == 3

# ---------------------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the row and the file
def _load_all(dls):
    for dl in (dls.train.new(shuffle=False, sampler=None), dls.valid):
        for _ in dl: pass

def test_corrupt_image(synth_copy):
    path, df = synth_copy
    (path/df.fn[5]).write_bytes(b'this is not an image')
    with pytest.raises(MTLDataError, match=rf"row 5 \(fn='{df.fn[5]}'\): image .* cannot be read \(UnidentifiedImageError"):
        dls_of(path, df, tasks=[ClassificationTask('shape')])              # the default check reads every header
    dls = dls_of(path, df, tasks=[ClassificationTask('shape')], check=None)   # without it: found when loaded, still named
    with pytest.raises(MTLDataError, match=rf"row 5 \(fn='{df.fn[5]}'.*UnidentifiedImageError"): _load_all(dls)

def test_missing_image_file(synth_copy):
    path, df = synth_copy
    (path/df.fn[7]).unlink()
    with pytest.raises(MTLDataError, match=rf"image file\(s\) not found.*row 7 \(fn='{df.fn[7]}'\)"): dls_of(path, df)

def test_empty_image_name(synth):
    path, df = synth
    df = df.copy(); df.loc[4, 'fn'] = None
    with pytest.raises(MTLDataError, match="no image file name in 'fn': row 4"): dls_of(path, df)

def test_mask_of_wrong_size(synth_copy):
    path, df = synth_copy
    i = df.index[df['mask'].notna()][0]
    Image.fromarray(np.zeros((20, 32), np.uint8)).save(path/df['mask'][i])
    with pytest.raises(MTLDataError, match=rf"row {i} \(mask='{df['mask'][i]}'\): mask .* is 32x20 \(w x h\) but its image is 32x32"):
        dls_of(path, df)   # found by the default check (headers only)
    with pytest.raises(MTLDataError, match=rf"row {i} \(fn='{df.fn[i]}', mask='{df['mask'][i]}'.*mask is 32x20 \(w x h\) but its image is 32x32"):
        _load_all(dls_of(path, df, check=None))  # without it: found while building the DataLoaders (they load a sample) or when loading

def test_mask_values_outside_codes(synth_copy):
    path, df = synth_copy
    i = df.index[df['mask'].notna()][0]
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(path/df['mask'][i])
    with pytest.raises(MTLDataError, match=rf"row {i} .*has values \[7\] outside the 4 codes"): _load_all(dls_of(path, df))

def test_mask_file_missing(synth_copy):
    path, df = synth_copy
    i = df.index[df['mask'].notna()][0]
    (path/df['mask'][i]).unlink()
    with pytest.raises(MTLDataError, match=rf"name a mask file missing.*row {i} \(mask='{df['mask'][i]}'\)"): dls_of(path, df)

def test_label_outside_vocab(synth):
    path, df = synth
    df = df.copy(); df.loc[9, 'shape'] = 'hexagon'
    with pytest.raises(MTLDataError, match=r"label outside the vocab \['circle', 'square', 'triangle'\]: row 9 \(shape='hexagon'\)"):
        dls_of(path, df, tasks=[ClassificationTask('shape', vocab=['circle', 'square', 'triangle'])])

def test_box_bad_order_and_partial(synth):
    path, df = synth
    i = df.index[df['x1'].notna()][0]
    bad = df.copy(); bad.loc[i, 'x1'] = bad.loc[i, 'x2'] + 1
    with pytest.raises(MTLDataError, match=rf"x1 > x2 or y1 > y2: row {i}"): dls_of(path, bad)
    bad = df.copy(); bad.loc[i, 'y2'] = None
    with pytest.raises(MTLDataError, match=rf"some but not all 4 box coordinates: row {i}"): dls_of(path, bad)

def test_box_outside_image(synth):
    path, df = synth
    i = df.index[df['x1'].notna()][0]
    df = df.copy(); df.loc[i, 'x2'] = 40.
    with pytest.raises(MTLDataError, match=rf"row {i} .*reaches outside its 32x32"): dls_of(path, df, tasks=[BoxTask()])
    dls = dls_of(path, df, tasks=[BoxTask()], check=None)     # unchecked: the sample itself still says so
    with pytest.raises(MTLDataError, match=rf"row {i} .*lies outside its 32x32"): _load_all(dls)

def test_task_column_missing(synth):
    path, df = synth
    with pytest.raises(MTLDataError, match=r"column\(s\) \['breed'\] not in the DataFrame"):
        dls_of(path, df, tasks=[ClassificationTask('breed')])

def test_task_without_labels_warns(synth):
    path, df = synth
    df = df.copy(); df.loc[~df.is_valid, 'mask'] = None
    with pytest.warns(UserWarning, match=r"SegmentationTask\('mask'\) has no labelled sample in the training set"):
        dls_of(path, df)

def test_batch_where_a_task_has_no_labels(synth):
    "A batch where one task has no label at all still loads, with that task entirely at its sentinel"
    path, df = synth
    df = df.copy(); df['shape'] = None
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        dls = dls_of(path, df, tasks=[ClassificationTask('shape', vocab=['circle', 'square', 'triangle'])])
    _, lbl = dls.valid.one_batch()
    assert (lbl == MISSING_LABEL).all()
