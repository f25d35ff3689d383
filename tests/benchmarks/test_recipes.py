"""The recipe check (benchmarks/recipes.py): the down-scaled variant of representative real-data recipes
runs end to end, and a broken recipe is reported and fails the check."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("balda_bench_recipes", ROOT / "benchmarks" / "recipes.py")
recipes = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))  # dataclasses need it there
_spec.loader.exec_module(recipes)

#: One recipe each: DAFormer self-training + GBW (RCS), DeepLabV2 AdvEnt + GH, the CPSL chain on SYNTHIA
#: (warm-up -> prepare -> stage 1 -> distillation), RIPU pixel and CBDA 20% (one acquisition round each).
SUBSET = [
    "gta2cs/daformer_self_training_gbw",
    "gta2cs/deeplabv2_advent_gh",
    "syn2cs/deeplabv2_cpsl_distill",
    "gta2cs/deeplabv2_ripu_pixel",
    "gta2cs/deeplabv2_cbda_20",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("recipe_data")
    recipes.ensure_data(d, "down")
    return d


def test_every_recipe_and_its_prerequisites_are_planned():
    names = recipes.recipe_names()
    assert len(names) == 41 and all(n.startswith(("gta2cs/", "syn2cs/")) for n in names)
    order = recipes.plan(names)
    assert sorted(order) == sorted(names)
    for n in names:
        pre = recipes.prerequisite(n)
        assert pre is None or order.index(pre) < order.index(n)
    assert recipes.plan(["syn2cs/deeplabv2_cpsl_distill"]) == [
        "syn2cs/deeplabv2_cpsl_warmup",
        "syn2cs/deeplabv2_cpsl",
        "syn2cs/deeplabv2_cpsl_distill",
    ]
    from balda.core.errors import ConfigError

    with pytest.raises(ConfigError, match="streets/source_only"):
        recipes.plan(["streets/source_only"])


def test_overrides_keep_the_recipe_at_full_scale_and_shrink_it_down(tmp_path):
    from balda.config import load_config, resolve_config

    # the layout ensure_data returns
    roots = {"gta5": tmp_path / "gta5" / "source", "synthia": tmp_path / "synthia" / "source"}
    roots["cityscapes"] = tmp_path / "gta5" / "target"
    name = "syn2cs/daformer_self_training_gbw"
    real = load_config(resolve_config(name))
    full = load_config(resolve_config(name), recipes.overrides_for(name, roots, tmp_path, "full", "cpu"))
    down = load_config(resolve_config(name), recipes.overrides_for(name, roots, tmp_path, "down", "cpu"))
    assert full.data.crop == real.data.crop == [512, 512] and full.model.backbone == "mit_b5"
    assert full.data.source.resize == [760, 1280] and full.data.source.root == str(roots["synthia"])
    assert full.model.pretrained is None and full.method.self_training.imnet_model is None  # MiT: random
    assert (full.train.iters, full.train.eval_every, full.train.ckpt_every, full.eval.max_images) == (2, 0, 0, 2)
    assert full.balancing == real.balancing and full.method.self_training.pseudo_threshold == 0.968
    assert down.data.crop == [64, 64] and down.model.backbone == "mit_b0"
    assert down.data.source.resize == [76, 128] and down.data.target.resize == [64, 128] and down.eval.size == [64, 128]
    assert (down.method.self_training.ignore_top, down.method.self_training.ignore_bottom) == (2, 15)
    ripu = load_config(
        resolve_config("gta2cs/deeplabv2_ripu_pixel"),
        recipes.overrides_for("gta2cs/deeplabv2_ripu_pixel", roots, tmp_path, "down", "cpu"),
    )
    assert ripu.active.rounds == [0.5] and ripu.data.crop == [64, 128] and ripu.model.backbone == "resnet18"
    # DeepLabV2 loads stand-in ImageNet weights of the backbone it runs with
    assert ripu.model.pretrained == str(tmp_path / "weights" / f"resnet18_standin_v{recipes.STANDIN_VERSION}.pth")
    real_ripu = load_config(resolve_config("gta2cs/deeplabv2_ripu_pixel"))
    r101 = load_config(
        resolve_config("gta2cs/deeplabv2_ripu_pixel"),
        recipes.overrides_for("gta2cs/deeplabv2_ripu_pixel", roots, tmp_path, "full", "cpu"),
    )
    assert (
        r101.model.pretrained == str(tmp_path / "weights" / f"resnet101_standin_v{recipes.STANDIN_VERSION}.pth")
        and r101.model.freeze_bn
    )
    capped = load_config(
        resolve_config("gta2cs/deeplabv2_ripu_pixel"),
        recipes.overrides_for("gta2cs/deeplabv2_ripu_pixel", roots, tmp_path, "full", "cpu", max_batch=1),
    )
    assert (capped.data.batch_source, capped.data.batch_target) == (1, 1) and capped.data.crop == r101.data.crop
    assert (r101.data.batch_source, r101.data.batch_target) == (2, 2)
    # on a CPU at full scale no loader worker is forked from the trainer's heap; on a GPU they stay
    gpu = load_config(
        resolve_config("gta2cs/deeplabv2_ripu_pixel"),
        recipes.overrides_for("gta2cs/deeplabv2_ripu_pixel", roots, tmp_path, "full", "cuda"),
    )
    assert r101.data.num_workers == 0 and gpu.data.num_workers == real_ripu.data.num_workers > 0
    small = load_config(
        resolve_config(name), recipes.overrides_for(name, roots, tmp_path, "full", "cpu", small_backbones=True)
    )
    assert small.model.backbone == "mit_b0" and small.data == full.data and small.eval == full.eval
    assert small.method == full.method and small.balancing == full.balancing


def test_down_scaled_subset_runs_end_to_end(data, tmp_path):
    md = tmp_path / "recipes.md"
    args = ["--recipes", *SUBSET, "--data", str(data), "--out", str(tmp_path / "runs"), "--markdown", str(md)]
    rc = recipes.main([*args, "--device", "cpu"])
    text = md.read_text()
    assert rc == 0, text
    rows = [line for line in text.splitlines() if line.startswith(("| gta2cs/", "| syn2cs/"))]
    assert len(rows) == 7 and all("| ok |" in r for r in rows), text
    assert all("| source.ce " in r and " -> " in r for r in rows), text  # the loss at step 1 -> step 2
    assert "cpsl prepare on syn2cs/deeplabv2_cpsl_warmup" in text and "teacher syn2cs_deeplabv2_cpsl" in text
    assert text.count("1 acquisition round") == 2
    runs = tmp_path / "runs"
    assert (runs / "gta2cs_deeplabv2_cbda_20" / "final_metrics.json").is_file()
    assert not list(runs.rglob("*.pt"))  # checkpoints are dropped once nothing starts from them


def test_a_broken_recipe_is_reported_and_fails_the_check(data, tmp_path, monkeypatch):
    real = recipes.overrides_for

    def broken(name, *a, **k):
        return real(name, *a, **k) + (["model.backbone=resnet7"] if name.endswith("_warmup") else [])

    monkeypatch.setattr(recipes, "overrides_for", broken)
    md = tmp_path / "recipes.md"
    rc = recipes.main(
        ["--recipes", "syn2cs/deeplabv2_cpsl", "--data", str(data), "--out", str(tmp_path), "--markdown", str(md)]
    )
    text = md.read_text()
    assert rc == 1
    assert "| syn2cs/deeplabv2_cpsl_warmup |" in text and "resnet7" in text
    assert "skipped: needs syn2cs/deeplabv2_cpsl_warmup, which failed" in text
    assert "**0/2 ok**" in text


def test_resume_reuses_the_ledger_and_reruns_a_prerequisite_whose_weights_are_gone(tmp_path):
    chain = recipes.plan(["syn2cs/deeplabv2_cpsl_distill"])  # warm-up -> stage 1 -> distillation
    warm, stage1, distill = chain
    ok = {n: recipes.Result(n, "train", at="abc1234, cpu") for n in chain}
    # everything passed: nothing runs again
    assert recipes.reusable(chain, ok, tmp_path) == set(chain)
    # the distillation failed, and stage 1's checkpoint was dropped: stage 1 trains again, and so its
    # warm-up (whose checkpoint is gone too), so that stage 1 can be prepared from it
    failed = {**ok, distill: recipes.Result(distill, "train", status="RuntimeError: x")}
    assert recipes.reusable(chain, failed, tmp_path) == set()
    # ... but a stage-1 run that still has its weights is reused, and so is the warm-up it needs no more
    (recipes._run_dir(stage1, tmp_path)).mkdir(parents=True)
    (recipes._run_dir(stage1, tmp_path) / "final.pt").write_bytes(b"")
    assert recipes.reusable(chain, failed, tmp_path) == {warm, stage1}
    missing = {warm: ok[warm]}  # a ledger that stopped after the warm-up, its checkpoint gone
    assert recipes.reusable(chain, missing, tmp_path) == set()


def test_resume_goes_on_from_the_ledger_and_refuses_another_variant(data, tmp_path, monkeypatch):
    from balda.core.errors import ConfigError

    md = tmp_path / "recipes.md"
    one = ["--recipes", "gta2cs/deeplabv2_advent_gh", "--data", str(data), "--out", str(tmp_path / "runs")]
    assert recipes.main([*one, "--device", "cpu", "--markdown", str(md)]) == 0
    ledger = json.loads(md.with_suffix(".json").read_text())
    row = ledger["rows"]["gta2cs/deeplabv2_advent_gh"]
    assert ledger["scale"] == "down" and row["status"] == "ok" and row["at"].endswith(", cpu")
    assert "reused" not in row and row["standin"] == recipes.STANDIN_VERSION

    def no_training(name, *a, **k):
        raise AssertionError(f"{name} ran again")

    monkeypatch.setattr(recipes, "run_recipe", no_training)
    assert recipes.main([*one, "--device", "cpu", "--markdown", str(md), "--resume"]) == 0
    text = md.read_text()
    assert "1 rows were measured earlier (`--resume`)" in text and "| ok |" in text, text
    assert json.loads(md.with_suffix(".json").read_text())["rows"]["gta2cs/deeplabv2_advent_gh"] == row
    with pytest.raises(ConfigError, match="recipes.json is of --scale down"):
        recipes.load_ledger(md.with_suffix(".json"), "full", True)
    # a row from before the stand-in version was recorded: a DeepLabV2 one ran with version 1, and says so
    old = {k: v for k, v in row.items() if k != "standin"}
    ledger["rows"] = {"gta2cs/deeplabv2_advent_gh": old, "gta2cs/daformer_source_only": {**old, "recipe": "x"}}
    md.with_suffix(".json").write_text(json.dumps(ledger))
    rows = recipes.load_ledger(md.with_suffix(".json"), "down", False)
    assert rows["gta2cs/deeplabv2_advent_gh"].standin == 1 and rows["gta2cs/daformer_source_only"].standin is None
    assert recipes.main([*one, "--device", "cpu", "--markdown", str(md), "--resume"]) == 0
    assert "+ final eval, stand-in weights v1 | ok |" in md.read_text(), md.read_text()


def test_standin_weights_load_strictly_and_hold_the_source_batch_statistics(data, tmp_path):
    """The stand-in ImageNet file of a DeepLabV2 ResNet: torchvision's layout (loads through
    model.pretrained into the frozen-BN segmentor), and each BatchNorm's running statistics are the
    batch statistics of its input on the two calibration crops (checked in closed form for the stem);
    each residual branch ends in a BatchNorm scale of 1/sqrt(number of blocks), every other scale 1."""
    import numpy as np
    import torch

    from balda.data.io import read_image
    from balda.models import load_pretrained
    from balda.models.deeplabv2 import DeepLabV2

    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    path = tmp_path / "w" / "resnet18_standin.pth"
    src = data / "gta5" / "source"
    assert recipes.ensure_standin_weights(path, "resnet18", src, mean, std, crop=48) == path
    stamp = path.stat().st_mtime_ns
    assert recipes.ensure_standin_weights(path, "resnet18", src, mean, std, crop=48) == path
    assert path.stat().st_mtime_ns == stamp  # cached
    model = DeepLabV2("resnet18", 19, freeze_bn=True)
    assert load_pretrained(model, path).loaded == len(model.backbone.state_dict())
    images = [read_image(p)[:48, :48] for p in sorted((src / "images").glob("*.png"))[:2]]
    x = (np.stack(images).astype(np.float32) - np.float32(mean)) / np.float32(std)
    with torch.no_grad():
        z = model.backbone.conv1(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).double()
    bn = model.backbone.bn1
    torch.testing.assert_close(bn.running_mean.double(), z.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var.double(), z.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(model.backbone.layer4[1].bn2.running_var, torch.ones(512))
    bb = model.backbone
    blocks = [b for layer in (bb.layer1, bb.layer2, bb.layer3, bb.layer4) for b in layer]
    assert len(blocks) == 8
    for b in blocks:
        torch.testing.assert_close(b.bn2.weight, torch.full_like(b.bn2.weight, 8**-0.5))
        torch.testing.assert_close(b.bn1.weight, torch.ones_like(b.bn1.weight))
    torch.testing.assert_close(bn.weight, torch.ones_like(bn.weight))
    v1 = recipes.standin_backbone("resnet18", src, mean, std, crop=48, branch_scale=1.0)  # version 1's scales
    assert not v1.training and all(torch.equal(b.bn2.weight, torch.ones_like(b.bn2.weight)) for b in v1.layer4)


def test_max_batch_caps_the_batch_and_the_row_says_so(data, tmp_path):
    md = tmp_path / "recipes.md"
    args = ["--recipes", "gta2cs/deeplabv2_ripu_pixel", "gta2cs/deeplabv2_advent", "--data", str(data)]
    rc = recipes.main([*args, "--out", str(tmp_path / "runs"), "--markdown", str(md), "--max-batch", "1"])
    text = md.read_text()
    assert rc == 0, text
    assert "--max-batch 1`" in text
    ripu = next(line for line in text.splitlines() if line.startswith("| gta2cs/deeplabv2_ripu_pixel |"))
    advent = next(line for line in text.splitlines() if line.startswith("| gta2cs/deeplabv2_advent |"))
    assert "train 2 iters at batch 1+1 (the recipe's 2+2) + final eval" in ripu and "| ok |" in ripu
    assert "at batch" not in advent  # its batch is 1+1 already


def test_real_imagenet_weights_replace_random_init_where_the_backbone_has_them(data, tmp_path):
    """``--weights BACKBONE=PATH``: the recipes whose check runs that backbone load the file through
    model.pretrained (and as the self-training ImageNet model); the others keep random init / stand-ins;
    a wrong option is an error naming it."""
    from balda.config import load_config, resolve_config
    from balda.core.errors import ConfigError

    roots = {"gta5": tmp_path / "gta5" / "source", "synthia": tmp_path / "synthia" / "source"}
    roots["cityscapes"] = tmp_path / "gta5" / "target"
    r101, b5 = tmp_path / "r101.pth", tmp_path / "b5.pth"
    r101.write_bytes(b"x")
    b5.write_bytes(b"x")
    weights = recipes.parse_weights([f"resnet101={r101}", f"mit_b5={b5}"])
    assert weights == {"resnet101": r101.resolve(), "mit_b5": b5.resolve()}

    def cfg(name, scale):
        return load_config(
            resolve_config(name), recipes.overrides_for(name, roots, tmp_path, scale, "cpu", weights=weights)
        )

    st = cfg("gta2cs/daformer_self_training", "full")
    assert st.model.pretrained == str(b5.resolve()) and st.method.self_training.imnet_model == str(b5.resolve())
    assert cfg("gta2cs/deeplabv2_advent", "full").model.pretrained == str(r101.resolve())
    down = cfg("gta2cs/deeplabv2_advent", "down")  # resnet18 has no file: the stand-in
    assert down.model.pretrained == str(recipes.standin_path(roots, "resnet18"))
    assert cfg("gta2cs/daformer_self_training", "down").method.self_training.imnet_model is None
    for bad, match in (
        ("resnet7=x", "unknown backbone 'resnet7'"),
        (f"mit_b5={tmp_path}/no.pth", "no such file"),
        ("mit_b5", "expected BACKBONE=PATH"),
    ):
        with pytest.raises(ConfigError, match=match):
            recipes.parse_weights([bad])
    assert recipes.main(["--weights", "resnet7=x", "--markdown", str(tmp_path / "r.md")]) == 2

    # end to end: a down-scaled DeepLabV2 recipe with a ResNet-18 file given as its ImageNet weights
    src = data / "gta5" / "source"
    r18 = recipes.ensure_standin_weights(tmp_path / "r18.pth", "resnet18", src, st.data.mean, st.data.std, crop=48)
    md = tmp_path / "w.md"
    one = ["--recipes", "gta2cs/deeplabv2_advent", "--data", str(data), "--out", str(tmp_path / "runs")]
    assert recipes.main([*one, "--device", "cpu", "--markdown", str(md), "--weights", f"resnet18={r18}"]) == 0
    text = md.read_text()
    assert "ImageNet weights r18.pth" in text and "--weights resnet18=r18.pth" in text, text
    run_cfg = load_config(tmp_path / "runs" / "gta2cs_deeplabv2_advent" / "config.yaml")
    assert run_cfg.model.pretrained == str(r18.resolve())


def test_loss_trend_reads_the_source_loss_at_the_first_and_last_step(tmp_path):
    m = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 1, "kind": "train", "loss/target.adv": 0.69, "loss/source.ce": 17.0},
        {"step": 2, "kind": "eval", "eval/miou": 0.1},
        {"step": 2, "kind": "train", "loss/target.adv": 0.7, "loss/source.ce": 1300.6},
    ]
    m.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert recipes.loss_trend(m) == "source.ce 17 -> 1.3e+03"
    m.write_text(json.dumps({"step": 1, "kind": "train", "loss/sem": 2.5}) + "\n")  # no source.* term
    assert recipes.loss_trend(m) == "sem 2.5 -> 2.5"
    assert recipes.loss_trend(tmp_path / "missing.jsonl") is None
