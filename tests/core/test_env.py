"""The run environment record (balda.core.env): what a run says it trained on."""

from __future__ import annotations

import json

import torch

from balda.core.env import describe, environment, record


def test_environment_names_the_cpu_kernels_and_the_numeric_stack():
    env = environment("cpu")
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["packages"]["torch"] and env["packages"]["numpy"] and env["torch_threads"] == torch.get_num_threads()
    assert "cuda_device" not in env
    json.dumps(env)  # JSON-able
    line = describe(env)
    assert line.startswith(f"{env['cpu']} ({env['cpu_capability']}), {env['torch_threads']} threads")
    assert f"torch {env['packages']['torch']}" in line and f"numpy {env['packages']['numpy']}" in line


def test_record_keeps_every_start_of_a_resumed_run_and_a_fresh_start_replaces_them(tmp_path):
    record(tmp_path, 0)
    record(tmp_path, 40)  # resumed, perhaps on another machine: both kept
    starts = json.loads((tmp_path / "environment.json").read_text())["starts"]
    assert [s["step"] for s in starts] == [0, 40]
    record(tmp_path, 0)  # the run started again from scratch
    assert [s["step"] for s in json.loads((tmp_path / "environment.json").read_text())["starts"]] == [0]
    (tmp_path / "environment.json").write_text("{not json")
    record(tmp_path, 10)  # a damaged record does not stop training
    assert [s["step"] for s in json.loads((tmp_path / "environment.json").read_text())["starts"]] == [10]
