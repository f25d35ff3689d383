"""The command line as a new user meets it: options and overrides in any order, values converted to
their key's type, one-line errors, resume that refuses silent config changes, predict and export."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from balda.cli import _more_seeds, _split_resume, main, shown_bench_args
from tests.conftest import tiny_overrides


def _train(tiny_streets, tmp_path, *extra, name="run", iters=4):
    return main(["train", "streets/source_only", *tiny_overrides(tiny_streets, tmp_path, name, iters), *extra])


def test_overrides_after_options(tiny_streets, tmp_path):
    # `--no-progress` before the overrides used to be "unrecognized arguments"
    assert main(["train", "streets/source_only", "--no-progress", *tiny_overrides(tiny_streets, tmp_path, "a", 2)]) == 0
    assert (tmp_path / "a" / "final_metrics.json").is_file()


def test_resume_token_is_a_path_only_when_it_is_one(tmp_path):
    ck = tmp_path / "x.pt"
    ck.write_bytes(b"")
    assert _split_resume(["--resume", "train.iters=5", "out_dir=x"]) == ["--resume", "train.iters=5", "out_dir=x"]
    assert _split_resume(["--resume", str(ck), "a=1"]) == ["--resume", "--resume-from", str(ck), "a=1"]
    assert _split_resume(["--resume=run/last.pt"]) == ["--resume", "--resume-from", "run/last.pt"]
    assert _split_resume(["--resume", "streets/x"]) == ["--resume", "streets/x"]  # not a path: the config


def test_eval_view_13_on_the_command_line(tiny_streets, tmp_path, capsys):
    assert _train(tiny_streets, tmp_path, "eval.view=13", name="v", iters=1) == 0
    cfg = (tmp_path / "v" / "config.yaml").read_text()
    assert "view: '13'" in cfg


@pytest.mark.parametrize(
    "override,key",
    [
        ("data.batch_source=0", "data.batch_source"),
        ("optim.lr=-1", "optim.lr"),
        ("data.crop=[32]", "data.crop"),
        ("train.iters=0", "train.iters"),
        ("train.device=gpu", "train.device"),
        ("train.device=cuda:7", "train.device"),
    ],
)
def test_bad_values_are_one_line_errors(tiny_streets, tmp_path, capsys, override, key):
    if override == "train.device=cuda:7" and torch.cuda.device_count() > 7:  # pragma: no cover
        pytest.skip("this machine has 8 GPUs")
    assert _train(tiny_streets, tmp_path, override) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_resume_refuses_a_changed_config_and_names_the_keys(tiny_streets, tmp_path, capsys):
    assert _train(tiny_streets, tmp_path, name="r", iters=4) == 0
    capsys.readouterr()
    rc = _train(tiny_streets, tmp_path, "--resume", "optim.lr=0.1", "train.iters=6", name="r", iters=6)
    err = capsys.readouterr().err
    assert rc == 2 and "optim.lr" in err and "train.iters" in err and "--allow-changes" in err
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "lr: 0.1" not in saved  # nothing was rewritten


def test_resume_with_allowed_changes_applies_and_records_them(tiny_streets, tmp_path):
    from balda.engine.logger import read_metrics

    assert _train(tiny_streets, tmp_path, "optim.lr=0.01", "optim.warmup_iters=0", name="r2", iters=4) == 0
    rc = _train(
        tiny_streets,
        tmp_path,
        "optim.lr=0.02",
        "optim.warmup_iters=0",
        "--resume",
        "--allow-changes",
        "train.iters",
        "optim.lr",
        name="r2",
        iters=8,
    )
    assert rc == 0
    changes = json.loads((tmp_path / "r2" / "changes.json").read_text())
    assert changes[-1]["step"] == 4
    assert changes[-1]["changes"]["train.iters"] == [4, 8] and changes[-1]["changes"]["optim.lr"] == [0.01, 0.02]
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "r2", "train")}
    # the new schedule is in force: poly(power 1) decay of the new base lr over the new length
    assert lrs[5] == pytest.approx(0.02 * (1 - 5 / 8), rel=1e-5)
    assert "lr: 0.02" in (tmp_path / "r2" / "config.yaml").read_text()


def test_resume_logs_the_step_it_resumes_at(tiny_streets, tmp_path):
    from balda.engine.logger import read_metrics

    over = ["train.ckpt_every=2", "train.log_every=1"]
    assert _train(tiny_streets, tmp_path, *over, "train.iters=2", name="l", iters=2) == 0
    assert _train(tiny_streets, tmp_path, *over, "--resume", "--allow-changes", "train.iters", name="l", iters=4) == 0
    steps = [r["step"] for r in read_metrics(tmp_path / "l", "train")]
    assert steps == [1, 2, 3, 4]


def _images(folder, n=3, size=(40, 56)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        ext = "png" if i % 2 == 0 else "jpg"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"img{i}.{ext}")


def test_predict_folder_video_and_skip(tiny_streets, tmp_path):
    import cv2

    from balda import predict

    assert _train(tiny_streets, tmp_path, name="p", iters=1) == 0
    _images(tmp_path / "in" / "sub")
    video = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 32))
    for k in range(3):
        w.write(np.full((32, 64, 3), 40 * k, np.uint8))
    w.release()
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            str(tmp_path / "p"),
            str(tmp_path / "in"),
            str(video),
            "--out",
            str(out),
            "--format",
            "color",
            "labelid",
            "trainid",
            "--overlay",
            "--no-progress",
        ]
    )
    assert rc == 1  # the broken image stops it, by default
    rc = main(
        [
            "predict",
            str(tmp_path / "p"),
            str(tmp_path / "in"),
            str(video),
            "--out",
            str(out),
            "--format",
            "color",
            "labelid",
            "trainid",
            "--overlay",
            "--on-error",
            "skip",
            "--no-progress",
        ]
    )
    assert rc == 0
    for i in range(3):
        for fmt in ("color", "labelid", "trainid", "overlay"):
            assert (out / "sub" / f"img{i}_{fmt}.png").is_file(), (i, fmt)
    assert len(list((out / "clip").glob("frame_*_color.png"))) == 3
    tid = np.asarray(Image.open(out / "sub" / "img0_trainid.png"))
    assert tid.shape == (40, 56) and tid.max() < 19
    # the Python API gives the same maps
    preds = predict(tmp_path / "p", [tmp_path / "in" / "sub" / "img0.png"], progress=False)
    assert np.array_equal(preds[0].trainids, tid)


def test_export_loads_with_plain_torch_load(tiny_streets, tmp_path):
    from balda import evaluate

    assert _train(tiny_streets, tmp_path, name="e", iters=2) == 0
    with pytest.raises(pickle.UnpicklingError):  # a training checkpoint needs weights_only=False (numpy RNG)
        torch.load(tmp_path / "e" / "final.pt")
    assert main(["export", str(tmp_path / "e"), str(tmp_path / "model.pt")]) == 0
    obj = torch.load(tmp_path / "model.pt")  # default weights_only=True
    assert obj["format"] == "balda-weights-1" and obj["model_config"]["name"] == "small"
    final = json.loads((tmp_path / "e" / "final_metrics.json").read_text())["miou"]
    assert evaluate(tmp_path / "model.pt", progress=False).miou == pytest.approx(final, abs=1e-12)


def test_configs_have_descriptions(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert all(len(line.split(None, 1)) == 2 for line in lines), [x for x in lines if len(x.split(None, 1)) < 2]


def test_help_reads_without_rst_markup(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and "predict" in out and "cpsl prepare" in out
    assert main(["generate", "streets", "--help"]) == 0


def test_generate_help_shows_defaults_and_profiles(capsys):
    main(["generate", "streets", "--help"])
    out = capsys.readouterr().out
    assert "default: 0.65" in out and "hard" in out and "default: data/streets" in out


def test_missing_base_names_the_referencing_file(tmp_path):
    from balda.config import ConfigError, load_config

    cfg = tmp_path / "child.yaml"
    cfg.write_text("_base_: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"nope\.yaml.*the _base_ of .*child\.yaml"):
        load_config(cfg)


def test_readme_command_drops_the_options_that_do_not_change_results():
    argv = ["--jobs", "2", "--no-progress", "--commit", "abc1234", "--readme", "README.md", "--methods", "a", "b"]
    assert shown_bench_args(argv) == ["--jobs", "2", "--methods", "a", "b"]
    assert shown_bench_args(["--readme=R.md", "--commit=abc", "--seeds", "3"]) == ["--seeds", "3"]


def test_more_seeds_option():
    from balda.config import ConfigError

    assert _more_seeds(["5", "advent", "advent+gh"]) == {"advent": range(5), "advent+gh": range(5)}
    assert _more_seeds(None) == {}
    for bad in (["advent"], ["5"], ["0", "advent"]):
        with pytest.raises(ConfigError, match="--more-seeds"):
            _more_seeds(bad)


def test_bench_readme_block_is_named_after_the_output_folder(tmp_path, monkeypatch):
    # a second grid of one benchmark (`--out results/streets_seeds5`) gets its own README block
    # instead of overwriting the benchmark's main one
    import balda.experiments as exp
    from balda.experiments import readme_markers

    out = tmp_path / "streets_seeds5"
    out.mkdir()
    (out / "summary.md").write_text("| method | mIoU |\n")
    (out / "summary.json").write_text(json.dumps({"runs": [{"method": "advent", "seed": 0}]}))
    monkeypatch.setattr(exp, "run_grid", lambda *a, **k: {"markdown": "", "out": str(out), "seconds": 0.0})
    readme = tmp_path / "README.md"
    begin, end = readme_markers("streets")
    readme.write_text(f"# x\n{begin}\nmain table\n{end}\n")
    argv = ["bench", "--methods", "advent", "--out", str(out), "--readme", str(readme), "--commit", "abc"]
    assert main(argv) == 0
    text = readme.read_text()
    assert "main table" in text and text.count(readme_markers("streets_seeds5")[0]) == 1
    assert "records of 1 of the 1 runs were not kept" in text  # no per-run record kept: the block says so
    (out / "advent_s0").mkdir()
    (out / "advent_s0" / "final_metrics.json").write_text("{}")
    assert main(argv) == 0
    assert "in git, so the table can be re-summarised" in readme.read_text()
