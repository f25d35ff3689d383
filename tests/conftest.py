"""Shared fixtures: a tiny embedded benchmark and configs that train in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# CI is deterministic: property tests draw the same examples on every run (a red CI always means a
# change). `pytest --hypothesis-profile=explore` draws fresh examples, to hunt for new failures.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", max_examples=500)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def tiny_streets(tmp_path_factory) -> Path:
    """A tiny street benchmark (32x64 images; 8 source, 8 target train, 4 target val)."""
    from balda.data.streets import generate_streets

    out = tmp_path_factory.mktemp("streets")
    generate_streets(out, size=(32, 64), n_source=8, n_target_train=8, n_target_val=4, seed=0, progress=False)
    return out


#: The tiny runs use the small random-init CPU model (seconds per run, and float-exact enough for the
#: distributed equality tests); the benchmark's pretrained EfficientNet-Lite0 recipe has its own test.
TINY_MODEL = ["model.name=small", "model.pretrained=null", "model.width=8", "model.output_stride=2"]


def tiny_overrides(data: Path, out: Path, name: str = "run", iters: int = 4) -> list[str]:
    return [
        f"name={name}",
        f"out_dir={out}",
        f"train.iters={iters}",
        "train.log_every=1",
        "train.ckpt_every=2",
        "train.progress=false",
        "train.tensorboard=false",
        "data.crop=[32, 64]",
        "data.batch_source=2",
        "data.batch_target=2",
        *TINY_MODEL,
        f"data.source.root={data / 'source'}",
        f"data.target.root={data / 'target'}",
        f"data.val.root={data / 'target'}",
    ]


@pytest.fixture
def tiny_config(tiny_streets, tmp_path):
    """``tiny_config(method_config, *overrides)`` -> Config of a seconds-long run on the tiny benchmark."""
    from balda.config import load_config, resolve_config

    def make(config: str = "streets/source_only", *overrides: str, iters: int = 4, name: str = "run"):
        return load_config(
            resolve_config(config), tiny_overrides(tiny_streets, tmp_path, name, iters) + list(overrides)
        )

    return make
