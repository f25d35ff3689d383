import pytest

from balda.config import Config, ConfigError, load_config, parse_overrides


def test_defaults_and_overrides():
    cfg = load_config(
        None,
        ["train.iters=7", "data.crop=[64, 32]", "model.pretrained=null", "optim.lr=1e-3", "method.name=self_training"],
    )
    assert isinstance(cfg, Config)
    assert cfg.train.iters == 7 and cfg.data.crop == [64, 32] and cfg.model.pretrained is None
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.method.name == "self_training"


def test_int_is_accepted_for_float():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.iterz=3", "train.iterz"),
        ("train.iters=abc", "train.iters"),
        ("method.name=nope", "method.name"),
        ("data.crop=5", "data.crop"),
        ("train.progress=1", "train.progress"),
    ],
)
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(None, [override])


def test_yaml_base_inheritance_and_file_named_in_errors(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {iters: 11, seed: 3}\nmodel: {name: small}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain: {iters: 12}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.train.iters == 12 and cfg.train.seed == 3 and cfg.model.name == "small"
    (tmp_path / "bad.yaml").write_text("_base_: base.yaml\ntrain: {itres: 12}\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(tmp_path / "broken.yaml")


def test_parse_overrides_nested():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])


def test_every_shipped_config_loads():
    from balda.config import resolve_config, shipped_configs

    names = shipped_configs()
    assert {"streets/source_only", "streets/oracle", "gta2cs/daformer_self_training"} <= set(names)
    for n in names:
        load_config(resolve_config(n))
