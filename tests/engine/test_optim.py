import pytest
import torch

from balda.config import OptimConfig
from balda.engine.optim import build_optimizer, lr_factor


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        self.decode_head = torch.nn.Conv2d(4, 2, 1)

    def no_decay_parameter_names(self):
        return ["backbone.1.weight", "backbone.1.bias"]


def test_poly_and_warmup_factors():
    cfg = OptimConfig(power=0.9)
    assert lr_factor(0, 100, cfg) == 1.0
    assert lr_factor(50, 100, cfg) == pytest.approx(0.5**0.9)
    w = OptimConfig(power=1.0, warmup_iters=10, warmup_ratio=1e-6)
    assert lr_factor(0, 100, w) == pytest.approx(1e-6)
    assert lr_factor(5, 100, w) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert lr_factor(10, 100, w) == pytest.approx(0.9)


def test_daformer_groups_head_lr_and_no_decay():
    cfg = OptimConfig(name="adamw", lr=6e-5, head_lr_mult=10, weight_decay=0.01, no_decay_norm=True, power=1.0)
    net = Net()
    proto = torch.nn.Parameter(torch.zeros(3))
    opt, sched = build_optimizer(net, cfg, 100, extra=[proto])
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["head"]["lr"] == pytest.approx(6e-4)
    assert groups["backbone"]["lr"] == pytest.approx(6e-5) and groups["backbone"]["weight_decay"] == 0.01
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert groups["extra"]["params"][0] is proto
    n = sum(len(g["params"]) for g in opt.param_groups)
    assert n == len(list(net.parameters())) + 1
    opt.step()
    sched.step()
    assert groups["head"]["lr"] == pytest.approx(6e-4 * (1 - 1 / 100))
