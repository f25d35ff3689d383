import math

import torch
import torch.nn.functional as F

from balda.methods.minent import MinEntConfig, MinEntStrategy

from .conftest import MEAN, STD, ConstSegmentor, K, RecordingWeighting, make_batch, make_model


def _entropy_of(logits: torch.Tensor) -> torch.Tensor:
    model = ConstSegmentor(logits)
    st = MinEntStrategy(model, None, MinEntConfig(lambda_ent=0.001), logits.shape[1], MEAN, STD)
    return st.compute_losses(model, make_batch(num_classes=logits.shape[1]), 0).losses["target.ent"]


def test_entropy_on_known_distributions():
    assert torch.allclose(_entropy_of(torch.zeros(1, K, 32, 32)), torch.tensor(1.0), atol=1e-6)  # uniform
    one_hot = torch.full((1, K, 32, 32), -1e4)
    one_hot[:, 2] = 0.0
    assert _entropy_of(one_hot).abs().item() < 1e-6  # one-hot
    two = torch.full((1, K, 32, 32), -1e4)
    two[:, :2] = 0.0  # (1/2, 1/2)
    assert torch.allclose(_entropy_of(two), torch.tensor(math.log(2) / math.log(K)), atol=1e-6)
    mixed = torch.zeros(1, K, 32, 32)
    mixed[..., :16] = -1e4
    mixed[:, 0, :, :16] = 0.0  # half one-hot, half uniform
    assert torch.allclose(_entropy_of(mixed), torch.tensor(0.5), atol=1e-5)


def test_losses_weights_and_gradients():
    model, batch = make_model(), make_batch()
    model.eval()
    rec = RecordingWeighting(torch.tensor([1.0, 2.0, 0.0, 1.0, 1.0]))
    st = MinEntStrategy(model, {"source": rec}.get, MinEntConfig(lambda_ent=0.01), K, MEAN, STD, seed=1)
    out = st.compute_losses(model, batch, 0)
    assert set(out.losses) == {"source.ce", "target.ent"} and out.task == ("source.ce",)
    assert out.weight("target.ent") == 0.01 and out.weight("source.ce") == 1.0
    ys = batch["source"]["label"]
    up = F.interpolate(model(batch["source"]["image"]).logits, size=(32, 32), mode="bilinear", align_corners=False)
    ce = F.cross_entropy(up, ys, reduction="none", ignore_index=255)
    valid = ys != 255
    w = rec.weights[ys.clamp(max=K - 1)]
    assert torch.allclose(out.losses["source.ce"], (ce * w * valid).sum() / valid.sum(), atol=1e-6)
    ((logits, labels),) = rec.calls
    assert torch.allclose(logits, up, atol=1e-6) and torch.equal(labels, ys)
    # the entropy term alone reaches the segmentor
    out.losses["target.ent"].backward()
    assert model.decode_head.conv_seg.weight.grad.abs().sum() > 0
    assert [p for p in st.parameters() if p.requires_grad] == []
