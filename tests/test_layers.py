"Encoder hooks, segmentation decoders, classification and box heads: shapes, choices of skips, gradients, copies."
import copy, pickle
import pytest, torch
from torch import nn
from fastai.vision.all import create_body, resnet18, ConvLayer, DynamicUnet, TimmBody, total_params, model_sizes
from fastai_mtl.layers import *

def stages(n_in=3):
    "A tiny conv body: reductions 2, 4, 8; 32 channels out"
    return nn.Sequential(ConvLayer(n_in, 8, stride=2), ConvLayer(8, 16, stride=2), ConvLayer(16, 16), ConvLayer(16, 32, stride=2))

@pytest.fixture(scope='module')
def r18():
    torch.manual_seed(0)
    return create_body(resnet18(), pretrained=False)

def test_resnet_skips_are_dynamic_unets(r18):
    f = EncoderFeatures(r18, 64)
    sizes = model_sizes(r18, (64, 64))
    test_names = [str(i) for i in range(len(sizes)-1) if sizes[i][-1] != sizes[i+1][-1]]
    assert f.names == test_names == ['2', '4', '5', '6']
    assert (f.channels, f.reductions, f.n_in, f.nf) == ([64, 64, 128, 256], [2, 4, 8, 16], 3, 512)
    f.remove()

def test_dummy_pass_keeps_training_mode():
    b = stages().train()
    EncoderFeatures(b).remove()
    assert b.training and all(m.training for m in b.modules())
    b.eval(); EncoderFeatures(b).remove()
    assert not b.training

def test_plain_sequential_and_shared_module():
    f = EncoderFeatures(stages())
    assert (f.names, f.channels, f.reductions, f.nf) == (['0', '2'], [8, 16], [2, 4], 32)
    class Shared(nn.Module):  # one ReLU instance used at every resolution: never a skip
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.c3, self.act = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU()
        def forward(self, x): return self.act(self.c3(self.act(self.c2(self.act(self.c1(x))))))
    f = EncoderFeatures(Shared())
    assert 'act' not in f.names and f.names == ['c1', 'c2']

def test_names_override_and_errors():
    f = EncoderFeatures(stages(), names=['1'])
    assert f.names == ['1'] and f.channels == [16] and f.reductions == [4]
    with pytest.raises(ValueError, match='not modules'): EncoderFeatures(stages(), names=['nope'])
    class Unused(nn.Module):
        def __init__(self): super().__init__(); self.body, self.unused = stages(), nn.ReLU()
        def forward(self, x): return self.body(x)
    with pytest.raises(ValueError, match='exactly once'): EncoderFeatures(Unused(), names=['unused'])
    with pytest.raises(ValueError, match='cut the model'): EncoderFeatures(nn.Sequential(stages(), nn.AdaptiveAvgPool2d(1), nn.Flatten()))

def test_timm_feature_info():
    import timm
    f = EncoderFeatures(TimmBody(timm.create_model('resnet18', pretrained=False, num_classes=0)))
    assert f.names == ['model.act1', 'model.layer1', 'model.layer2', 'model.layer3'] and f.reductions == [2, 4, 8, 16]
    f = EncoderFeatures(TimmBody(timm.create_model('convnext_atto', pretrained=False, num_classes=0)))
    assert f.reductions == [4, 8, 16] and f.nf == 320

def test_hooks_store_input_and_features_with_grad():
    b = stages(); f = EncoderFeatures(b)
    x = torch.randn(2, 3, 40, 24)
    b(x)
    assert f.input is x and [tuple(o.shape) for o in f.stored] == [(2, 8, 20, 12), (2, 16, 10, 6)]
    assert all(o.requires_grad for o in f.stored)
    f.clear(); assert f.input is None and f.stored == [None, None]
    f.remove(); b(x); assert f.input is None

def test_feature_hook_copies_empty():
    b = stages(); f = EncoderFeatures(b)
    m = nn.Sequential(b); m.f = f
    m(torch.randn(2, 3, 32, 32))            # stored tensors are non-leaf: deepcopy would fail if they were copied
    for m2 in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert m2.f.input is None
        x = torch.randn(1, 3, 32, 32)
        m2(x)
        assert torch.equal(m2.f.input, x) and not torch.equal(m.f.input, x)

DECODERS = ['unet', 'dynamic', 'light']

@pytest.mark.parametrize('decoder', DECODERS)
@pytest.mark.parametrize('size', [(32, 32), (40, 24), (37, 53)])
def test_decoder_output_size(decoder, size):
    b = stages(); dec = decoders[decoder](EncoderFeatures(b), 5)
    x = torch.randn(2, 3, *size)
    assert dec(b(x)).shape == (2, 5, *size)

def test_decoder_resnet_odd_size(r18):
    f = EncoderFeatures(r18)
    for d in DECODERS:
        dec = decoders[d](f, 3)
        assert dec(r18(torch.randn(2, 3, 72, 56))).shape == (2, 3, 72, 56)
    f.remove()

def test_decoder_registry():
    assert decoders.keys() == DECODERS and decoders['unet'] is UnetDecoder and decoders['dynamic'] is DynamicUnetDecoder
    with pytest.raises(ValueError, match="unknown decoder 'tiny': use one of"): decoders['tiny']

def test_unet_decoder_is_smp_sized(r18):
    "The classic decoder has segmentation_models_pytorch's Unet decoder + head parameter count (read from smp 0.6)"
    f = EncoderFeatures(r18)
    assert total_params(UnetDecoder(f, 5))[0] == 14_328_789 - 11_176_512
    f.remove()

def test_dynamic_decoder_matches_dynamic_unet(r18):
    f = EncoderFeatures(r18)
    dec, light = DynamicUnetDecoder(f, 5), DynamicUnetDecoder(f, 5, light=True)
    unet = DynamicUnet(create_body(resnet18(), pretrained=False), 5, (64, 64))
    assert total_params(dec)[0] == total_params(unet)[0] - total_params(r18)[0]
    assert total_params(dec)[0] > 40*total_params(light)[0]
    assert any(isinstance(b.hook, SkipProjection) for b in light.blocks)
    f.remove()

@pytest.mark.parametrize('kw', [dict(last_cross=False), dict(bottle=True), dict(self_attention=True, blur=True),
                                dict(y_range=(0, 1)), dict(light=True, width=8)])
def test_dynamic_decoder_options(kw):
    b = stages(); dec = DynamicUnetDecoder(EncoderFeatures(b), 2, **kw)
    y = dec(b(torch.randn(2, 3, 40, 24)))
    assert y.shape == (2, 2, 40, 24)
    if 'y_range' in kw: assert y.min() >= 0 and y.max() <= 1

def test_decoder_up_path_when_first_skip_is_coarse():
    b = nn.Sequential(ConvLayer(3, 8, stride=4), ConvLayer(8, 16, stride=2))   # first feature map at 1/4
    f = EncoderFeatures(b)
    assert f.reductions == [4]
    for d in DECODERS:
        assert decoders[d](f, 2)(b(torch.randn(2, 3, 36, 20))).shape == (2, 2, 36, 20)

@pytest.mark.parametrize('decoder', DECODERS)
def test_gradient_reaches_encoder_through_skips(decoder):
    b = stages(); dec = decoders[decoder](EncoderFeatures(b), 2)
    dec(b(torch.randn(2, 3, 32, 32)).detach()).mean().backward()   # only the skips lead back to the body
    assert b[0][0].weight.grad.abs().sum() > 0 and b[1][0].weight.grad.abs().sum() > 0
    assert b[3][0].weight.grad is None

@pytest.mark.parametrize('decoder', DECODERS)
def test_decoder_needs_the_body_first(decoder):
    b = stages(); f = EncoderFeatures(b); dec = decoders[decoder](f, 2)
    with pytest.raises(RuntimeError, match='run the body'): dec(torch.randn(2, 32, 4, 4))

def test_light_seg_head():
    x = torch.randn(2, 512, 3, 2)
    assert LightSegHead(512, 4, img_size=(72, 56))(x).shape == (2, 4, 72, 56)
    assert LightSegHead(512, 4, img_size=64)(x).shape == (2, 4, 64, 64)
    assert LightSegHead(512, 4)(x).shape == (2, 4, 96, 64)
    assert LightSegHead(512, 4, stride=8)(x).shape == (2, 4, 24, 16)
    assert LightSegHead(64, 4, width=32, min_width=8)(torch.randn(2, 64, 2, 2)).shape == (2, 4, 64, 64)
    with pytest.raises(ValueError, match='power of 2'): LightSegHead(512, 4, stride=12)
    h = LightSegHead(512, 4); x.requires_grad_()
    h(x).mean().backward()
    assert x.grad.abs().sum() > 0

def test_classification_head():
    h = ClassificationHead(512, 7)
    assert h(torch.randn(2, 512, 3, 2)).shape == (2, 7)
    lins = [m for m in h.modules() if isinstance(m, nn.Linear)]
    assert lins[0].in_features == 1024   # concat pooling doubles nf
    h = ClassificationHead(512, 7, concat_pool=False, lin_ftrs=[32, 16], ps=0.)
    assert [m.out_features for m in h.modules() if isinstance(m, nn.Linear)] == [32, 16, 7]
    assert h(torch.randn(2, 512, 1, 1)).shape == (2, 7)

def test_params_to_box():
    assert torch.equal(params_to_box(torch.zeros(3, 4)), torch.tensor([[-.5, -.5, .5, .5]]*3))
    torch.manual_seed(0)
    b = params_to_box(torch.randn(20000, 4)*3)
    assert b.min() >= -1 and b.max() <= 1 and (b[:, 2:] >= b[:, :2]).all()
    assert (b[:, 2:] - b[:, :2]).max() > 1.5 and (b[:, 2:] - b[:, :2]).min() < 0.05   # large and small boxes reachable
    p = torch.randn(5, 4, requires_grad=True)
    params_to_box(p).sum().backward()
    assert p.grad.abs().sum() > 0

def test_box_to_params_inverts_params_to_box():
    torch.manual_seed(0)
    b = params_to_box(torch.randn(1000, 4)*2)
    assert torch.allclose(params_to_box(box_to_params(b)), b, atol=2e-3)
    assert torch.allclose(box_to_params(torch.tensor([-.5, -.5, .5, .5])), torch.zeros(4), atol=1e-6)
    assert torch.isfinite(box_to_params(torch.tensor([[-1., -1, 1, 1], [0, 0, 0, 0], [.3, .2, .1, .0]]))).all()  # edges, empty, inverted

def test_box_head():
    h = BoxHead(512, hidden=64)
    x = torch.randn(4, 512, 2, 2)
    out = h(x)
    assert out.shape == (4, 4) and torch.allclose(out, torch.tensor([-.5, -.5, .5, .5]).expand(4, 4), atol=0.02)
    (out - torch.tensor([-.9, -.2, .3, .8])).abs().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in h.parameters())   # every layer learns from the start
    opt = torch.optim.SGD(h.parameters(), lr=0.1)
    opt.step()
    assert not torch.allclose(h(x), out)
    for sz in [(1, 1), (3, 5), (9, 9)]: assert h(torch.randn(2, 512, *sz)).shape == (2, 4)   # any feature map size

def test_box_head_starts_at_the_mean_box():
    mb = torch.tensor([-.3, -.7, .4, .1])
    h = BoxHead(512, mean_box=mb).eval()
    assert torch.allclose(params_to_box(h.mlp[-1].bias.detach()), mb, atol=1e-4)
    out = h(torch.randn(8, 512, 4, 4))
    assert torch.allclose(out, mb.expand(8, 4), atol=0.02)
    assert isinstance(h.mlp[-1], nn.Linear) and not isinstance(h.mlp[-2], (nn.Dropout, nn.BatchNorm1d))

def test_box_head_reads_the_deepest_skip():
    body = create_body(resnet18(), pretrained=False)
    feats = EncoderFeatures(body, (64, 64))
    h = BoxHead(512, feats)
    x = torch.randn(2, 3, 64, 64)
    out = h(body(x))
    assert out.shape == (2, 4)
    out.sum().backward()
    assert h.reduce[1][0][0].weight.grad.abs().sum() > 0          # the 1/16 map's reduction learns
    assert body[6][0].conv1.weight.grad.abs().sum() > 0           # and so does layer3, through the skip

def test_pooled_box_head():
    h = PooledBoxHead(512, lin_ftrs=[64])
    out = h(torch.randn(4, 512, 2, 2))
    assert torch.allclose(out, torch.tensor([-.5, -.5, .5, .5]).expand(4, 4))
