__version__ = "0.1.0"
# Each module registers its strategies (decoders, samplers, weightings, architectures) where they are defined;
# importing them all here makes every registered name work wherever a module of the package is used.
from . import (core, synth, pets, transforms, losses, metrics, layers, samplers, loader, tasks, cache, data, weighting,  # noqa: E402,F401
               recorder, model, alternation, learner, crossstitch, transfer, compare, interpret, pseudo)
