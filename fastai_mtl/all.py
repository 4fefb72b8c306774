"Everything public in fastai_mtl (and fastai's vision API), as `from fastai_mtl.all import *`"
from fastai.vision.all import *
from .core import *
from .synth import *
from .pets import *
from .transforms import *
from .losses import *
from .metrics import *
from .layers import *
from .loader import *
from .tasks import *
from .data import *
from .model import *
from .learner import *
from .weighting import *
from .alternation import *
from .crossstitch import *
from .demo import *
