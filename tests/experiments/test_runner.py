import json

from balda.experiments import Cell, run_grid


def test_tiny_grid_end_to_end_and_resumable(tiny_streets, tmp_path):
    """A 2-method x 2-seed grid runs, writes the table, and a second call re-runs nothing."""
    extra = [
        "train.iters=2",
        "train.log_every=1",
        "model.name=small",
        "model.pretrained=null",
        "model.width=8",
        "data.crop=[32, 64]",
        "data.batch_source=2",
        "data.batch_target=2",
        "train.tensorboard=false",
    ]
    out = tmp_path / "grid"
    run_grid(["source_only", "self_training+gbw"], [0, 1], tiny_streets, out, progress=False, extra=extra)
    run_grid(["advent+gh"], [0], tiny_streets, out, progress=False, extra=extra)
    s = run_grid(
        ["source_only", "self_training+gbw", "advent+gh"], [0, 1], tiny_streets, out, progress=False, extra=extra
    )
    assert set(s["table"]) == {"source_only", "self_training+gbw", "advent+gh"}
    md = (out / "summary.md").read_text()
    assert "| source_only | 2 |" in md and "self_training+gbw" in md
    assert "steps in conflict" in md and "| advent+gh |" in md.split("steps in conflict")[1]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 6
    assert "gh_conflict" in summary["methods"]["advent+gh"]
    for png in ("class_iou.png", "miou.png", "rare_recall.png", "training_source_ce.png"):
        assert (out / png).is_file(), png
    assert (out / Cell("self_training+gbw", 0).name / "plots" / "class_weights_source.png").is_file()
    cfg = (out / Cell("self_training+gbw", 1).name / "config.yaml").read_text()
    assert "class_weights: gbw" in cfg and "seed: 1" in cfg
    # the tiny benchmark (generated with other parameters than the default) was used, not replaced
    assert len(list((tiny_streets / "source" / "images").glob("*.png"))) == 8
    stamp = (out / Cell("source_only", 0).name / "final_metrics.json").stat().st_mtime_ns
    run_grid(["source_only"], [0], tiny_streets, out, progress=False, extra=extra)
    assert (out / Cell("source_only", 0).name / "final_metrics.json").stat().st_mtime_ns == stamp


def test_some_methods_at_more_seeds(tiny_streets, tmp_path):
    """``seeds_of`` (``balda bench --more-seeds N ...``) runs those methods at their own seeds, and each
    method is summarised over its own seeds only, even when runs of other seeds are on disk."""
    import pytest

    from balda.core.errors import ConfigError

    extra = ["train.iters=2", "model.name=small", "model.pretrained=null", "model.width=8", "data.crop=[32, 64]"]
    extra += ["data.batch_source=2", "data.batch_target=2", "train.tensorboard=false"]
    out = tmp_path / "grid"
    kw = dict(progress=False, extra=extra)
    run_grid(["source_only"], [1], tiny_streets, out, **kw)  # a seed the next grid does not ask for
    s = run_grid(["source_only", "minent"], [0], tiny_streets, out, seeds_of={"minent": range(2)}, **kw)
    runs = json.loads((out / "summary.json").read_text())["runs"]
    assert sorted((r["method"], r["seed"]) for r in runs) == [("minent", 0), ("minent", 1), ("source_only", 0)]
    assert "| minent | 2 |" in s["markdown"] and "| source_only | 1 |" in s["markdown"]
    with pytest.raises(ConfigError, match="advent"):
        run_grid(["source_only"], [0], tiny_streets, out, seeds_of={"advent": range(5)}, **kw)


def test_cpsl_cell_runs_warmup_prepare_and_stage1(tiny_streets, tmp_path):
    """The CPSL cell trains its AdvEnt warm-up, prepares pseudo-labels from it, then trains stage 1."""
    extra = [
        "train.iters=2",
        "train.log_every=1",
        "model.name=small",
        "model.pretrained=null",
        "model.width=8",
        "data.crop=[32, 64]",
        "data.batch_source=2",
        "data.batch_target=2",
        "train.tensorboard=false",
        "method.cpsl.bank_size=64",
        "method.cpsl.samples_per_image=8",
    ]
    out = tmp_path / "grid"
    s = run_grid(["cpsl"], [0], tiny_streets, out, progress=False, extra=extra)
    assert "cpsl" in s["table"]
    assert (out / "advent_s0" / "final_metrics.json").is_file()
    assert (out / "cpsl_prepared_s0" / "manifest.json").is_file()
    assert (out / "cpsl_s0" / "plots" / "cpsl_marginal_vs_prior.png").is_file()
    logged = (out / "cpsl_s0" / "metrics.jsonl").read_text()
    assert "cpsl/assign_marginal" in logged and "loss/target.sl" in logged


def test_warm_cell_starts_from_its_source_only_cell(tiny_streets, tmp_path):
    """``self_training@warm`` trains (or reuses) the source-only cell of its seed and starts from its
    final weights through ``model.init``."""
    extra = [
        "train.iters=2",
        "train.log_every=1",
        "model.name=small",
        "model.pretrained=null",
        "model.width=8",
        "data.crop=[32, 64]",
        "data.batch_source=2",
        "data.batch_target=2",
        "train.tensorboard=false",
    ]
    out = tmp_path / "grid"
    s = run_grid(["self_training@warm"], [0], tiny_streets, out, progress=False, extra=extra)
    assert "self_training@warm" in s["table"]
    cfg = (out / Cell("self_training@warm", 0).name / "config.yaml").read_text()
    assert f"init: {out / 'source_only_s0' / 'final.pt'}" in cfg


def test_readme_section_is_replaced_between_markers(tmp_path):
    import json as _json

    from balda.experiments import README_BEGIN, README_END, write_readme_section

    out = tmp_path / "res"
    out.mkdir()
    (out / "summary.md").write_text("| method | mIoU |\n|---|---|\n| a | 1.0 |\n")
    (out / "summary.json").write_text(_json.dumps({"runs": [{"method": "a", "seed": 0}, {"method": "a", "seed": 1}]}))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_BEGIN}\nold\n{README_END}\n\ntail\n")
    write_readme_section(readme, out, "balda bench --seeds 3", commit="abc123")
    text = readme.read_text()
    assert "old" not in text and "| a | 1.0 |" in text and "`abc123`" in text and text.endswith("tail\n")
    assert "(2 runs)" in text and "balda bench --seeds 3" in text and "Trained on" not in text
    # runs that recorded their machine: the block says what they trained on, and what predates the record
    from balda.core.env import describe, record

    (out / "a_s0").mkdir()
    env = record(out / "a_s0", 0)
    write_readme_section(readme, out, "balda bench --seeds 3", commit="abc123")
    text = readme.read_text()
    assert f"Trained on: {describe(env)} (1 runs); not recorded (1 runs, trained before" in text, text


def test_each_benchmark_has_its_own_readme_block(tmp_path):
    import json as _json

    from balda.experiments import readme_markers, write_readme_section

    out = tmp_path / "res"
    out.mkdir()
    (out / "summary.json").write_text(_json.dumps({"runs": [{"method": "a", "seed": 0}]}))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    (out / "summary.md").write_text("streets table\n")
    write_readme_section(readme, out, "balda bench", commit="a", section="streets")
    (out / "summary.md").write_text("digits table\n")
    write_readme_section(readme, out, "balda bench", commit="b", section="digits")
    (out / "summary.md").write_text("digits table 2\n")
    write_readme_section(readme, out, "balda bench", commit="c", section="digits")
    text = readme.read_text()
    assert "streets table" in text and "digits table 2" in text and "digits table\n" not in text
    for section in ("streets", "digits"):
        begin, end = readme_markers(section)
        assert text.count(begin) == 1 and text.count(end) == 1 and text.index(begin) < text.index(end)


def test_active_cells_report_the_labelled_set_balance(tiny_streets, tmp_path):
    """Active cells add the KL-to-uniform / rarest-class-share table of the last round's labelled set."""
    extra = [
        "train.iters=4",
        "train.log_every=1",
        "model.name=small",
        "model.pretrained=null",
        "model.width=8",
        "data.crop=[32, 64]",
        "data.batch_source=2",
        "data.batch_target=2",
        "train.tensorboard=false",
        "active.rounds=[0.5]",
    ]
    out = tmp_path / "grid"
    s = run_grid(["ripu@10%"], [0], tiny_streets, out, progress=False, extra=extra)
    kl = s["table"]["ripu@10%"]["labelled_kl"][0]
    active = [
        json.loads(line)
        for line in (out / "ripu_10%_s0" / "metrics.jsonl").read_text().splitlines()
        if '"active"' in line
    ]
    assert abs(kl - active[-1]["active/kl_uniform"]) < 1e-12
    assert "| ripu@10% |" in (out / "summary.md").read_text().split("Labelled target set")[1]


def test_every_catalogue_method_is_a_valid_config(tmp_path):
    """Each catalogue entry (shipped config + overrides) loads: no unknown key, type or choice."""
    from balda.experiments import CATALOG, cell_config

    for method in CATALOG:
        cfg = cell_config(Cell(method, 1), tmp_path / "data", tmp_path / "out")
        assert cfg.train.seed == 1 and cfg.name == Cell(method, 1).name, method
    cfg = cell_config(Cell("cbda_dynamic@2%", 0), tmp_path / "data", tmp_path / "out")
    assert cfg.active.selection == "cbda" and not cfg.active.cbda.class_balance and cfg.active.cbda.dynamic
    assert cfg.active.budget == 0.02
