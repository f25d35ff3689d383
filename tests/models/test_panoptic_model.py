"""The panoptic segmentor: a segmentor's backbone and decoder adopted, plus centre / offset heads."""

from __future__ import annotations

import pytest
import torch

from balda.config import ModelConfig
from balda.models import build_model
from balda.models.panoptic import PanopticSegmentor, PanOutput


def _base():
    torch.manual_seed(0)
    return build_model(ModelConfig(name="small", pretrained=None, width=8, output_stride=2, num_classes=19))


def test_outputs_and_shapes():
    base = _base()
    m = PanopticSegmentor(base, head_channels=8).eval()
    x = torch.randn(2, 3, 32, 48)
    out = m(x)
    assert isinstance(out, PanOutput)
    ref = base.eval()(x)
    torch.testing.assert_close(out.logits, ref.logits)  # the semantic branch is the base model's
    h, w = ref.logits.shape[-2:]
    assert out.center.shape == (2, 1, h, w) and out.offset.shape == (2, 2, h, w)
    assert out.center.abs().max() < 0.5 and out.offset.abs().max() < 0.5  # heads start near 0


def test_adopts_the_tree_so_names_and_weights_carry_over():
    base = _base()
    m = PanopticSegmentor(base, head_channels=8)
    assert m.backbone is base.backbone and m.decode_head is base.decode_head
    names = {n.split(".")[0] for n, _ in m.named_parameters()}
    assert names == {"backbone", "decode_head", "center_head", "offset_head"}
    sd = base.state_dict()
    assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    assert m.num_classes == 19 and m.output_stride == base.output_stride
    assert "center_head.bn.weight" in m.no_decay_parameter_names()


def test_needs_a_balda_segmentor():
    with pytest.raises(TypeError):
        PanopticSegmentor(torch.nn.Conv2d(3, 3, 1))
