"Shared pytest fixtures: where the shared real data lives, and small synthetic datasets made on the fly."
import os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The real Oxford-IIIT Pet subset sits beside the project (never inside it); `FASTAI_MTL_PETS` overrides.
PETS = Path(os.environ.get('FASTAI_MTL_PETS', ROOT.parent/'shared'/'data'/'oxford-iiit-pet-3breeds'))

def have_pets(): return (PETS/'images').is_dir() and (PETS/'annotations').is_dir()

@pytest.fixture(scope='session')
def pets_path():
    if not have_pets(): pytest.skip(f'Oxford-IIIT Pet subset not found at {PETS}')
    return PETS


def conv_body(n_in:int=3, widths=(8, 16, 32), classifier:bool=False):
    """A small body: one stride-2 `ConvLayer` per width (1/2, 1/4, 1/8, ...); with `classifier`, pooling and a linear
    layer after it, as a torchvision model has (cut it with `cut=-3`)"""
    from torch import nn
    from fastai.vision.all import ConvLayer
    layers, ni = [], n_in
    for w in widths: layers.append(ConvLayer(ni, w, stride=2)); ni = w
    if classifier: layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ni, 10)]
    return nn.Sequential(*layers)

def quiet_learner(dls, **kw):
    "A tiny demo-body learner, seed 0, without a progress bar (the reliability tests' learner)"
    from fastai.vision.all import set_seed, ProgressCallback
    from fastai_mtl.learner import mtl_learner
    from fastai_mtl.demo import demo_body
    set_seed(0)
    learn = mtl_learner(dls, demo_body(widths=(8, 16)), pretrained=False, **kw)
    learn.remove_cb(ProgressCallback)
    return learn

def quiet_fit(learn, *a, **kw):
    "`learn.fit` without the progress table; returns `learn`"
    with learn.no_logging(): learn.fit(*a, **kw)
    return learn

@pytest.fixture(scope='module')
def one_thread():
    "One torch thread for a module of tiny models: intra-op threads only add overhead (and contention on a busy machine)"
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.fixture
def no_network(monkeypatch, tmp_path):
    "Every torchvision and timm download fails, into an empty torch hub cache"
    import urllib.error, torch
    def fail(*args, **kwargs): raise urllib.error.URLError('no network (simulated)')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', fail)
    hub = torch.hub.get_dir(); torch.hub.set_dir(str(tmp_path/'hub'))
    try:
        try: import timm.models._builder as tb
        except ImportError: tb = None
        if tb is not None:
            monkeypatch.setattr(tb, 'load_state_dict_from_hf', lambda *a, **k: (_ for _ in ()).throw(OSError('no network (simulated)')))
            monkeypatch.setattr(tb, 'download_cached_file', fail)
        yield
    finally: torch.hub.set_dir(hub)
