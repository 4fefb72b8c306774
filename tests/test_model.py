"The multi-task model: bodies from every kind of arch, outputs, gradients, copies, splitting, weights, custom_head."
import copy, io, pickle, warnings
import pytest, torch
from torch import nn
from fastai.vision.all import (resnet18, ConvLayer, TimmBody, total_params, params, imagenet_stats, Learner, TensorImage,
                               TensorMask, TensorCategory, DataLoaders, vision_learner, default_device, in_channels)
from fastai_mtl.core import Task
from fastai_mtl.layers import *
from fastai_mtl.model import *
from conftest import conv_body

# --- stand-ins for fastai_mtl.tasks: heads built the way the real tasks build them -------------------------------
class Seg(Task):
    kind = 'seg'
    def __init__(self, n=3): super().__init__(); self.n = n
    @property
    def n_out(self): return self.n
    def create_head(self, nf, features=None, img_size=None, decoder='unet', **kwargs):
        return decoders[decoder](features, self.n) if features is not None else LightSegHead(nf, self.n, img_size=img_size)

class Cls(Task):
    kind = 'cls'
    n_out = 4
    def create_head(self, nf, features=None, **kwargs): return ClassificationHead(nf, self.n_out, lin_ftrs=[32])

class Box(Task):
    kind = 'box'
    n_out = 4
    def create_head(self, nf, features=None, **kwargs): return BoxHead(nf, features, hidden=32)

TASKS = [Seg(3), Cls(), Box()]

def net(n_in=3): return conv_body(n_in, classifier=True)   # a small classifier: conv stages, pooling, linear

def shapes(model, x): return [tuple(o.shape) for o in model(x)]
def expected(bs, h, w, n_seg=3): return [(bs, n_seg, h, w), (bs, 4), (bs, 4)]

@pytest.fixture(scope='module')
def r18_light():
    torch.manual_seed(0)
    return create_mtl_model(resnet18, TASKS, pretrained=False, img_size=64, decoder='light')

# --- outputs ------------------------------------------------------------------------------------------------
def test_resnet18_both_decoders_odd_size(r18_light):
    assert shapes(r18_light, torch.randn(2, 3, 72, 56)) == expected(2, 72, 56)
    full = create_mtl_model(resnet18, TASKS, pretrained=False, img_size=64)
    assert isinstance(full.heads.heads[0], UnetDecoder) and r18_light.heads.heads[0].light
    assert shapes(full, torch.randn(2, 3, 40, 24)) == expected(2, 40, 24)
    outs = full(torch.randn(2, 3, 32, 32))
    assert all(isinstance(o, torch.Tensor) for o in outs) and type(outs[0]).__name__ == 'TensorBase'

def test_default_decoder_left_to_tasks():
    m = create_mtl_model(net(), TASKS, cut=-3, img_size=32)
    assert isinstance(m.heads.heads[0], UnetDecoder)
    with pytest.raises(ValueError, match="unknown decoder 'fancy'"): create_mtl_model(net(), TASKS, cut=-3, decoder='fancy')

@pytest.mark.parametrize('arch', ['resnet18', 'convnext_atto'])
def test_timm_by_name(arch):
    m = create_mtl_model(arch, TASKS, pretrained=False, img_size=64, decoder='light')
    assert isinstance(m.body, TimmBody)
    assert shapes(m, torch.randn(2, 3, 64, 48)) == expected(2, 64, 48)
    assert shapes(m, torch.randn(2, 3, 50, 38)) == expected(2, 50, 38)

def test_custom_body_cut_index_function_and_whole():
    for cut in (-3, lambda m: m[:3]):
        m = create_mtl_model(net(), TASKS, cut=cut, img_size=64)
        assert len(m.body) == 3 and shapes(m, torch.randn(2, 3, 40, 24)) == expected(2, 40, 24)
    m = create_mtl_model(net(), TASKS, img_size=64)   # cut at the last pooling layer, as create_body does
    assert len(m.body) == 3
    convs = nn.Sequential(ConvLayer(3, 8, stride=2), ConvLayer(8, 16, stride=2))   # no pooling: used whole
    m = create_mtl_model(convs, TASKS, img_size=32)
    assert m.body is convs and shapes(m, torch.randn(2, 3, 36, 20)) == expected(2, 36, 20)
    m = create_mtl_model(lambda: net(), TASKS, cut=-3, img_size=32)   # a function returning a module
    assert shapes(m, torch.randn(2, 3, 32, 32)) == expected(2, 32, 32)

@pytest.mark.parametrize('n_in', [1, 4])
def test_n_in(n_in):
    m = create_mtl_model(resnet18, TASKS, n_in=n_in, pretrained=False, img_size=64, decoder='light')
    assert in_channels(m.body) == n_in and m.heads.features.n_in == n_in
    assert shapes(m, torch.randn(2, n_in, 64, 48)) == expected(2, 64, 48)
    m = create_mtl_model(net(n_in), TASKS, n_in=n_in, cut=-3, img_size=32)   # already n_in channels: kept
    assert shapes(m, torch.randn(2, n_in, 32, 32)) == expected(2, 32, 32)
    m = create_mtl_model(net(), TASKS, n_in=n_in, cut=-3, img_size=32)      # 3 channels: adapted
    assert in_channels(m.body) == n_in and shapes(m, torch.randn(2, n_in, 32, 32)) == expected(2, 32, 32)

def test_n_in_timm():
    m = create_mtl_model('resnet18', TASKS, n_in=4, pretrained=False, img_size=64, decoder='light')
    assert shapes(m, torch.randn(2, 4, 64, 64)) == expected(2, 64, 64)

# --- gradients, parameters ----------------------------------------------------------------------------------
@pytest.mark.parametrize('decoder', ['unet', 'light'])
def test_gradient_reaches_body_and_every_head(decoder):
    m = create_mtl_model(net(), TASKS, cut=-3, img_size=32, decoder=decoder)
    sum(o.float().pow(2).mean() for o in m(torch.randn(2, 3, 32, 32))).backward()
    assert m.body[0][0].weight.grad.abs().sum() > 0
    for h in m.heads.heads: assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in h.parameters())

def test_each_head_alone_reaches_the_body():
    m = create_mtl_model(net(), TASKS, cut=-3, img_size=32, decoder='light')
    x = torch.randn(2, 3, 32, 32)
    for i in range(3):
        m.zero_grad()
        loss = lambda: (m(x)[i].float() - 0.3).pow(2).mean()
        loss().backward()
        assert m.body[0][0].weight.grad.abs().sum() > 0   # from the first step (the box head starts small, not at zero)
        assert all(p.grad is None or p.grad.abs().sum() == 0 for j,h in enumerate(m.heads.heads) if j != i for p in h.parameters())

def test_head_holds_no_body_parameter(r18_light):
    body, head = {id(p) for p in r18_light.body.parameters()}, {id(p) for p in r18_light.heads.parameters()}
    assert not body & head
    assert total_params(r18_light)[0] == total_params(r18_light.body)[0] + total_params(r18_light.heads)[0]

def test_head_alone_fails_clearly(r18_light):
    r18_light(torch.randn(2, 3, 64, 64))
    assert r18_light.heads.features.input is None   # cleared after each forward
    with pytest.raises(RuntimeError, match='run the body'): r18_light.heads(torch.randn(2, 512, 2, 2))

def test_kwargs_reach_every_task():
    seen = []
    class Spy(Cls):
        def create_head(self, nf, features=None, **kwargs): seen.append((nf, features, kwargs)); return super().create_head(nf)
    m = create_mtl_model(net(), [Spy(), Spy()], cut=-3, img_size=32, decoder='light', foo=1)
    assert [s[2] for s in seen] == [dict(decoder='light', foo=1)]*2 and seen[0][1] is m.heads.features and seen[0][0] == 32

# --- copies -------------------------------------------------------------------------------------------------
def _roundtrips(m):
    buf = io.BytesIO(); torch.save(m, buf); buf.seek(0)
    return [copy.deepcopy(m), pickle.loads(pickle.dumps(m)), torch.load(buf, weights_only=False)]

@pytest.mark.parametrize('decoder', ['unet', 'dynamic', 'light'])
def test_copies_use_their_own_hooks(decoder):
    torch.manual_seed(0)
    m = create_mtl_model(net(), TASKS, cut=-3, img_size=32, decoder=decoder)
    x = torch.randn(2, 3, 40, 24)
    m.train(); sum(o.float().mean() for o in m(x)).backward()   # a training step just ran
    m.eval()
    with torch.no_grad(): ref = m(x)
    m.body(x)                                                     # and the hooks hold non-leaf tensors
    assert m.heads.features.input is x and m.heads.features.stored[0].grad_fn is not None
    for c in _roundtrips(m):
        assert c.heads.features.input is None
        with torch.no_grad():
            for a, b in zip(c(x), ref): assert torch.allclose(a, b)
        y = torch.randn(2, 3, 40, 24)
        c.body(y)   # only the copy's hooks fire, and its decoder reads them
        dec = c.heads.heads[0]
        assert dec.features is c.heads.features and torch.equal(c.heads.features.input, y) and m.heads.features.input is x
        stored = c.heads.features.stored
        if decoder != 'unet':   # the fastai design's blocks hold the hooks themselves
            hooks = [b.hook.src if decoder == 'light' else b.hook for b in dec.blocks]
            assert [h.stored for h in hooks][::-1] == stored
        for p_c, p_m in zip(c.parameters(), m.parameters()): assert p_c is not p_m

def test_resnet_roundtrip(r18_light):
    r18_light.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = r18_light(x)
        for c in _roundtrips(r18_light):
            for a, b in zip(c(x), ref): assert torch.allclose(a, b)
    r18_light.train()

# --- splitting, freezing ------------------------------------------------------------------------------------
def test_splitter(r18_light):
    groups = mtl_splitter(r18_light)
    assert len(groups) == 3 and sum(len(g) for g in groups) == len(list(r18_light.parameters()))
    assert set(map(id, groups[-1])) == set(map(id, r18_light.heads.parameters())) | set(map(id, r18_light.weighting.parameters()))
    assert len(mtl_splitter(create_mtl_model(net(), TASKS, cut=-3, img_size=32))) == 2
    assert len(mtl_splitter(nn.Sequential(net()[:3], nn.Linear(2, 2)))) == 2   # any (body, head) model
    assert arch_meta(resnet18)['stats'] == imagenet_stats and 'stats' not in arch_meta(net())

def test_arch_meta_timm():
    meta = arch_meta('convnext_atto')
    assert len(meta['stats']) == 2 and len(meta['stats'][0]) == 3 and meta['split'] is arch_meta(net())['split']

def _dls(n=4, size=32):
    xs = torch.randn(n, 3, size, size)
    items = [(TensorImage(x), TensorMask(torch.zeros(size, size, dtype=torch.long)), TensorCategory(1), torch.tensor([-.5, -.5, .5, .5]))
             for x in xs]
    dls = DataLoaders.from_dsets(items, items, bs=n, device=default_device())
    dls.n_inp = 1
    return dls

def _loss(preds, *targs): return sum(p.float().pow(2).mean() for p in preds)

def test_freeze_trains_heads_only(r18_light):
    learn = Learner(_dls(), r18_light, loss_func=_loss, splitter=mtl_splitter)
    learn.freeze()
    assert len(learn.opt.param_groups) == 3
    assert all(p.requires_grad for p in params(r18_light.heads))
    assert not any(p.requires_grad for n,p in r18_light.body.named_parameters() if 'conv' in n or n.endswith('0.weight'))
    learn.unfreeze()
    assert all(p.requires_grad for p in r18_light.parameters())

def test_vision_learner_custom_head():
    dls = _dls()
    learn = vision_learner(dls, resnet18, custom_head=MultiTaskHead(TASKS, nf=512, img_size=32), pretrained=False,
                           loss_func=_loss, n_out=1)
    assert isinstance(learn.model[1], MultiTaskHead) and learn.model[1].features is None
    assert isinstance(learn.model[1].heads[0], LightSegHead)
    x = dls.one_batch()[0]
    assert shapes(learn.model, x) == expected(4, 32, 32)
    learn.freeze()
    assert len(learn.opt.param_groups) == 3 and all(p.requires_grad for p in params(learn.model[1]))
    before = [p.detach().clone() for p in learn.model[1].parameters()]
    learn.fit(1, 1e-2)
    assert any(not torch.equal(a, p) for a, p in zip(before, learn.model[1].parameters()))

# --- pretrained weights -------------------------------------------------------------------------------------
# `no_network`: tests/conftest.py

@pytest.mark.parametrize('arch', [resnet18, 'resnet18'])
def test_pretrained_without_network(no_network, arch):
    with pytest.raises(PretrainedWeightsError) as e: create_mtl_model(arch, TASKS, pretrained=True)
    msg = str(e.value)
    assert "weights='path/to/weights.pth'" in msg and 'pretrained=False' in msg and 'no network' in msg
    if arch is resnet18: assert 'resnet18-f37072fd.pth' in msg and 'hub' in msg
    create_mtl_body(arch, pretrained=False)   # works offline

def test_torchvision_weights_name_without_network(no_network):
    with pytest.raises(PretrainedWeightsError): create_mtl_body(resnet18, pretrained=False, weights='IMAGENET1K_V1')

def test_other_errors_not_disguised(no_network):
    def broken(pretrained=False): raise ValueError('bad arch argument')
    with pytest.raises(ValueError, match='bad arch'): create_mtl_body(broken, pretrained=True)
    with pytest.raises(RuntimeError, match='nknown model') as e: create_mtl_body('no_such_timm_model', pretrained=True)
    assert not isinstance(e.value, PretrainedWeightsError)

def test_weights_from_torchvision_file(tmp_path):
    tv = resnet18(); fn = tmp_path/'resnet18.pth'
    torch.save(tv.state_dict(), fn)
    m = create_mtl_model(resnet18, TASKS, weights=str(fn), img_size=64, decoder='light')
    assert torch.equal(m.body[0].weight, tv.conv1.weight) and torch.equal(m.body[7][1].bn2.running_mean, tv.layer4[1].bn2.running_mean)
    b4 = create_mtl_body(resnet18, n_in=4, weights=fn)
    assert torch.equal(b4[0].weight[:, :3], tv.conv1.weight) and (b4[0].weight[:, 3] == 0).all()
    b1 = create_mtl_body(resnet18, n_in=1, weights=fn)
    assert torch.allclose(b1[0].weight, tv.conv1.weight.sum(1, keepdim=True))

def test_weights_from_saved_model_and_checkpoint(tmp_path, r18_light):
    fn = tmp_path/'mtl.pth'
    torch.save(r18_light.state_dict(), fn)               # keys 'body.*', 'heads.*' (and the task list)
    b = create_mtl_body(resnet18, weights=fn)
    assert torch.equal(b[6][0].conv1.weight, r18_light.body[6][0].conv1.weight)
    torch.save({'model': r18_light.body.state_dict(), 'opt': {}}, fn)   # learn.save(with_opt=True) layout
    b = create_mtl_body(resnet18, weights=fn)
    assert torch.equal(b[0].weight, r18_light.body[0].weight)
    b = create_mtl_body(resnet18, weights={'module.'+k: v for k,v in r18_light.body.state_dict().items()})  # a DDP prefix
    assert torch.equal(b[0].weight, r18_light.body[0].weight)

def test_weights_timm_file(tmp_path):
    import timm
    tm = timm.create_model('resnet18', pretrained=False, num_classes=0); fn = tmp_path/'t.pth'
    torch.save(tm.state_dict(), fn)
    b = create_mtl_body('resnet18', weights=fn)
    assert torch.equal(b.model.layer2[0].conv1.weight, tm.layer2[0].conv1.weight)
    b = create_mtl_body('resnet18', n_in=1, weights=fn)
    assert torch.allclose(b.model.conv1.weight, tm.conv1.weight.sum(1, keepdim=True))
    with pytest.raises(ValueError, match='file or a state dict'): create_mtl_body('resnet18', weights='IMAGENET1K_V1')

def test_weights_reports_what_does_not_fit(tmp_path):
    tv = resnet18()
    sd = {k: v for k,v in tv.state_dict().items() if not k.startswith('layer4')}
    sd['layer1.0.conv1.weight'] = torch.zeros(2, 2, 3, 3)
    sd['extra.weight'] = torch.zeros(3)
    with pytest.warns(UserWarning) as rec: create_mtl_body(resnet18, weights=sd)
    msg = str(rec[0].message)
    assert 'Missing' in msg and 'layer4.0.conv1.weight' in msg and 'shape mismatch' in msg and 'layer1.0.conv1.weight' in msg
    assert 'Unexpected' in msg and 'extra.weight' in msg
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        create_mtl_body(resnet18, weights=tv.state_dict())   # a complete state dict: no warning
    with pytest.raises(ValueError, match='None of the 1 tensors'): create_mtl_body(resnet18, weights={'foo': torch.zeros(1)})
    with pytest.raises(FileNotFoundError): create_mtl_body(resnet18, weights=tmp_path/'missing.pth')

# --- MTLModel: what the library asks of a model; checkpoints checked before anything is copied ---------------
class Lab(Cls):
    "A class task with labels (its `spec` carries them)"
    def __init__(self, name, vocab): super().__init__(name); self.vocab = list(vocab)

def _tiny(tasks, seed=0):
    torch.manual_seed(seed)
    return create_mtl_model(net(), tasks, cut=-3, img_size=32, decoder='light')

def test_mtl_model_parts():
    m = _tiny(TASKS)
    assert isinstance(m, MTLModel) and m.names == ['seg', 'cls', 'box'] and list(m.encoders()) == ['seg+cls+box']
    shared, own = {id(p) for p in m.shared_parameters()}, {id(p) for p in m.task_parameters()}
    assert shared == {id(p) for p in m.body.parameters()} and own == {id(p) for p in m.heads.parameters()}
    assert {id(p) for p in m.task_parameters('cls')} == {id(p) for p in m.heads.heads[1].parameters()}
    with pytest.raises(ValueError, match="unknown task 'dog'"): m.task_parameters('dog')
    assert [s['name'] for s in m.task_specs] == ['seg', 'cls', 'box']

def _same(a, b): return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

@pytest.mark.parametrize('other', [[Lab('b', 'xyzw'), Lab('a', 'pqrs')],      # the same tasks in another order
                                   [Lab('a', 'wxyz'), Lab('b', 'pqrs')],      # a class task with other labels, same size
                                   [Lab('a', 'pqrs'), Lab('c', 'xyzw')]])     # another task
def test_checkpoint_of_other_tasks_is_refused_before_anything_changes(other):
    src, dst = _tiny([Lab('a', 'pqrs'), Lab('b', 'xyzw')]), _tiny(other, seed=1)
    before = copy.deepcopy(dst)
    with pytest.raises(CheckpointError, match='saved for other tasks') as e: dst.load_state_dict(src.state_dict())
    assert "another task's question" in str(e.value) and _same(dst, before)

def test_checkpoint_of_another_shape_is_refused_before_anything_changes():
    src = _tiny([Lab('a', 'pqrs'), Lab('b', 'xyzw')])
    sd = src.state_dict()
    k = next(k for k in sd if k.startswith('heads.heads.1.') and k.endswith('weight'))
    sd[k] = torch.zeros(3, *sd[k].shape[1:])
    dst = _tiny([Lab('a', 'pqrs'), Lab('b', 'xyzw')], seed=1); before = copy.deepcopy(dst)
    with pytest.raises(CheckpointError, match='another shape.*nothing was loaded'): dst.load_state_dict(sd)
    assert _same(dst, before)
    del sd[k]
    with pytest.raises(CheckpointError, match='1 missing'): dst.load_state_dict(sd)
    assert _same(dst, before)
    dst.load_state_dict(sd, strict=False)      # not strict: what fits loads
    assert torch.equal(dst.body[0][0].weight, src.body[0][0].weight)

def test_checkpoint_of_version_0_1_loads():
    "`nn.Sequential(body, MultiTaskHead)` keys ('0.', '1.'), no task list: renamed, loaded"
    src = _tiny(TASKS)
    old = {('0.' + k[5:] if k.startswith('body.') else '1.' + k[6:]): v for k, v in src.state_dict().items() if k != '_extra_state'}
    dst = _tiny(TASKS, seed=1)
    dst.load_state_dict(old)
    assert _same(dst, src)
