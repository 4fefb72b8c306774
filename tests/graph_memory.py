"A test helper: the bytes autograd graphs keep for backward (saved activations), counted while a context is active."
import torch

class _Saved:
    "A tensor autograd keeps for backward, counted by a `GraphMemory` while it lives"
    def __init__(self, t, gm):
        self.t, self.gm, self.key = t, gm, t.untyped_storage().data_ptr()
        gm._add(self.key, t.untyped_storage().nbytes())
    def __del__(self): self.gm._remove(self.key)

class GraphMemory:
    "Context manager measuring the bytes autograd graphs keep for backward (saved activations): `live` and `peak`"
    def __init__(self, exclude=()): # tensors not to count, e.g. the model's parameters
        self.exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self.live = self.peak = 0; self._refs, self._sizes = {}, {}
    def _add(self, key, n):
        if key in self.exclude: return
        self._refs[key] = self._refs.get(key, 0) + 1
        if self._refs[key] == 1: self._sizes[key] = n; self.live += n; self.peak = max(self.peak, self.live)
    def _remove(self, key):
        if key not in self._refs: return
        self._refs[key] -= 1
        if self._refs[key] == 0: del self._refs[key]; self.live -= self._sizes.pop(key)
    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: _Saved(t, self), lambda s: s.t)
        self._hooks.__enter__(); return self
    def __exit__(self, *args): self._hooks.__exit__(*args)
