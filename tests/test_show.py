"Figures read at a glance: no caption overlaps another picture or caption, whatever the number of tasks and `max_n`."
import itertools
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest
from fastai.vision.all import ProgressCallback, set_seed
from fastai_mtl.synth import synth_shapes, SHAPE_CODES
from fastai_mtl.tasks import SegmentationTask, ClassificationTask, BoxTask
from fastai_mtl.data import MTLDataLoaders
from fastai_mtl.learner import mtl_learner
from fastai_mtl.interpret import MTLInterpretation
from conftest import conv_body

pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py

@pytest.fixture(scope='module')
def dls():
    path, df = synth_shapes(40, size=32, seed=2, missing={'mask': 0.4, 'colour': 0.3, 'box': 0.3})
    tasks = [SegmentationTask('mask', SHAPE_CODES), ClassificationTask('shape'), ClassificationTask('colour'), BoxTask()]
    return MTLDataLoaders.from_df(df, path, 'fn', tasks, valid_col='is_valid', bs=16, num_workers=0)

def _overlaps(a, b) -> bool:
    "Whether two display-space boxes share an area (touching edges do not count)"
    return a.x0 < b.x1 - 1 and b.x0 < a.x1 - 1 and a.y0 < b.y1 - 1 and b.y0 < a.y1 - 1

def _captions(ax) -> list:
    "The non-empty title artists of `ax` (fastai_mtl captions with `loc='left'`)"
    return [t for t in (ax.title, ax._left_title, ax._right_title) if t.get_text()]

def check_layout(fig):
    "Every caption (an axes' title) inside the figure, clear of every other axes' picture and every other caption"
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    axs = [ax for ax in fig.axes if ax.get_visible() and (ax.axison or ax.images)]
    caps = [(ax, t.get_text(), t.get_window_extent(r)) for ax in axs for t in _captions(ax)]
    assert caps, 'no captions drawn'
    fb = fig.bbox
    for ax, txt, t in caps:
        assert t.x0 >= fb.x0 - 1 and t.x1 <= fb.x1 + 1 and t.y1 <= fb.y1 + 1, f'caption {txt!r} leaves the figure'
        for other in axs:
            if other is not ax: assert not _overlaps(t, other.get_window_extent(r)), f'caption {txt!r} covers a picture'
    for (a, ta, ba), (b, tb, bb) in itertools.combinations(caps, 2):
        assert not _overlaps(ba, bb), f'captions {ta!r} and {tb!r} overlap'
    return len(caps)

@pytest.mark.parametrize('max_n', [1, 3, 8, 9])
def test_show_batch_layout(dls, max_n):
    dls.train.show_batch(max_n=max_n)
    fig = plt.gcf()
    assert check_layout(fig) == max_n
    caps = '\n'.join(t.get_text() for ax in fig.axes for t in _captions(ax))
    assert 'missing' in caps or max_n < 8          # a missing target is said, not left out
    plt.close('all')

def test_the_check_can_fail():
    "A grid without room for its captions (what show_batch drew before constrained layout): the check fails"
    fig, axs = plt.subplots(2, 2, figsize=(4, 4))
    for ax in axs.flatten():
        ax.imshow([[0, 1], [1, 0]]); ax.set_title('mask\nshape: circle\ncolour: red\nbox: missing', loc='left', fontsize=8)
    with pytest.raises(AssertionError, match='covers a picture|overlap|leaves the figure'): check_layout(fig)
    plt.close('all')

@pytest.fixture(scope='module')
def learn(dls):
    set_seed(0)
    learn = mtl_learner(dls, conv_body(widths=(8, 16), classifier=True), pretrained=False, cut=-3, decoder='light')
    learn.remove_cb(ProgressCallback)
    return learn

@pytest.mark.parametrize('max_n', [2, 6])
def test_show_results_layout(learn, max_n):
    learn.show_results(max_n=max_n)
    assert check_layout(plt.gcf()) == 2*max_n          # target and prediction, side by side
    plt.close('all')

def test_top_losses_layout(learn):
    interp = MTLInterpretation.from_learner(learn)
    interp.plot_top_losses('mask', k=4)
    check_layout(plt.gcf())
    plt.close('all')
