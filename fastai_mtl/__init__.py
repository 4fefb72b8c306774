__version__ = "0.1.0"
# Each module registers its strategies (decoders, samplers, loss weightings, task alternations, architectures) where
# they are defined; importing them all here makes every registered name work wherever a module of the package is used.
from . import (core, synth, pets, transforms, losses, metrics, layers, loader, tasks, cache, data, model, weighting,  # noqa: E402,F401
               alternation, learner, crossstitch, compare, interpret, pseudo)
