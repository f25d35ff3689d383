"""A new method is one module: registering a toy strategy (with its config, a bench entry and a run
plot) here, in the test, is all it takes for the config loader, the trainer, ``balda bench`` and the
report to use it; nothing else is edited."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from balda.config import ConfigError, load_config, resolve_config, to_dict
from balda.core.registry import BENCH, RUN_PLOTS, STRATEGIES, BenchEntry, register_bench, register_strategy
from balda.methods.base import StepOutput, Strategy


@dataclass
class ToyConfig:
    #: weight of the (silly) target term: the mean squared logit of the target images
    scale: float = 1.0


class ToyStrategy(Strategy):
    def __init__(self, model, weighting, cfg: ToyConfig):
        super().__init__(model, weighting)
        self.cfg = cfg
        self.source_ce = self.make_ce("source")
        self.calls = 0

    @classmethod
    def from_config(cls, cfg, model, weighting=None):
        return cls(model, weighting, cfg.method.toy)

    def compute_losses(self, model, batch, step):
        self.calls += 1
        ce, logs = self.source_ce(model(batch["source"]["image"]).logits, batch["source"]["label"])
        sq = model(batch["target"]["image"]).logits.pow(2).mean()
        return StepOutput(
            losses={"source.ce": ce, "target.sq": sq},
            weights={"target.sq": self.cfg.scale},
            task=("source.ce",),
            logs=logs,
        )


def _toy_plot(out, train):
    path = out / "toy.txt"
    path.write_text(str(len(train)))
    return [path]


@pytest.fixture(autouse=True, scope="module")
def _register():
    """What a method module does at import (``@register_strategy`` on its class, ``RUN_PLOTS.add``,
    ``register_bench``), done here in a fixture so that other test modules never see the toy."""
    register_strategy("toy", config=ToyConfig, description="a toy strategy of the registry test")(ToyStrategy)
    RUN_PLOTS.add("toy", _toy_plot, replace=True)
    register_bench(
        BenchEntry("toy", "streets/source_only", ("method.name=toy", "method.toy.scale=0.5"), controls=("source_only",))
    )
    yield
    STRATEGIES.remove("toy")
    RUN_PLOTS.remove("toy")
    BENCH.remove("toy")


def test_toy_strategy_trains_through_the_registry(tiny_config):
    from balda.engine.trainer import Trainer

    cfg = tiny_config("streets/source_only", "method.name=toy", "method.toy.scale=0.25", iters=2)
    assert cfg.method.toy.scale == 0.25 and to_dict(cfg)["method"]["toy"] == {"scale": 0.25}
    tr = Trainer(cfg)
    assert isinstance(tr.strategy, ToyStrategy)
    tr.fit()
    assert tr.strategy.calls == 2
    assert "loss/target.sq" in (cfg.run_dir / "metrics.jsonl").read_text()
    assert (cfg.run_dir / "plots" / "toy.txt").is_file()  # the registered run plot ran


def test_toy_options_are_validated_strictly(tiny_config):
    with pytest.raises(ConfigError, match="method.toy.scal"):
        tiny_config("streets/source_only", "method.name=toy", "method.toy.scal=2")
    with pytest.raises(ConfigError, match="method.toy.scale"):
        tiny_config("streets/source_only", "method.name=toy", "method.toy.scale=fast")
    with pytest.raises(ConfigError, match="unknown strategy 'toyy'"):
        tiny_config("streets/source_only", "method.name=toyy")
    with pytest.raises(ConfigError, match="method.toyy"):
        load_config(resolve_config("streets/source_only"), ["method.toyy.scale=1"])


def test_toy_bench_entry_is_in_the_catalogue(tmp_path, capsys):
    from balda.cli import main
    from balda.experiments import Cell, cell_config, entries

    assert entries()["toy"].controls == ("source_only",)
    cfg = cell_config(Cell("toy", 0), tmp_path / "data", tmp_path / "out")
    assert cfg.method.name == "toy" and cfg.method.toy.scale == 0.5
    assert main(["bench", "--list"]) == 0
    assert "toy" in capsys.readouterr().out


def test_unknown_constructor_arguments_are_errors():
    from balda.methods.minent import MinEntConfig, MinEntStrategy
    from balda.models import SmallSegNet

    with pytest.raises(TypeError):
        MinEntStrategy(SmallSegNet(5, 8), None, MinEntConfig(), 5, lamda_ent=0.1)


def test_builtin_strategies_are_registered():
    assert {"source_only", "oracle", "self_training", "adversarial", "minent", "cpsl", "distill"} <= set(
        STRATEGIES.names()
    )
    assert torch  # the registry imports nothing heavier than the method modules
