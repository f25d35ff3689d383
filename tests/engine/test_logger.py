import json

import torch

from balda.engine.logger import RunLogger, read_metrics


def test_accumulate_flush_vectors_and_resume_truncation(tmp_path):
    lg = RunLogger(tmp_path, total=10, tensorboard=False, progress=False, class_names=("a", "b"))
    for i in range(4):
        lg.accumulate({"loss/x": torch.tensor(float(i)), "weights/source": torch.tensor([1.0, 3.0])})
    rec = lg.flush(4)
    assert rec["loss/x"] == 1.5 and rec["weights/source/b"] == 3.0
    lg.accumulate({"loss/x": torch.tensor(2.0)})
    lg.flush(8)
    lg.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "kind": "tr')  # a line cut by a kill
    assert [r["step"] for r in read_metrics(tmp_path)] == [4, 8]
    lg2 = RunLogger(tmp_path, total=10, start=5, tensorboard=False, progress=False)
    lg2.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [4]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["kind"] == "train"


def test_weights_average_over_present_steps_and_reach_tensorboard_every_step(tmp_path):
    """A class weight is NaN on steps where the class is absent: the file averages the other steps,
    a class absent on every step is null, and TensorBoard holds one point per step where present;
    keys logged on only some steps are averaged over those steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    nan = float("nan")
    lg = RunLogger(tmp_path, total=10, tensorboard=True, progress=False, class_names=("a", "b", "c"))
    steps = [torch.tensor([1.0, nan, nan]), torch.tensor([3.0, 2.0, nan]), torch.tensor([5.0, nan, nan])]
    for i, w in enumerate(steps):
        logs = {"weights/source": w}
        if i == 0:
            logs["gh/angle"] = torch.tensor(90.0)
        lg.accumulate(logs, i + 1)
    rec = lg.flush(3)
    lg.close()
    assert (
        rec["weights/source/a"] == 3.0
        and rec["weights/source/b"] == 2.0
        and rec["weights/source/c"] != rec["weights/source/c"]
    )
    assert rec["gh/angle"] == 90.0  # logged once: not divided by the 3 steps
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert line["weights/source/c"] is None
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    a = [(e.step, e.value) for e in ea.Scalars("weights/source/a")]
    assert a == [(1, 1.0), (2, 3.0), (3, 5.0)]
    assert [(e.step, e.value) for e in ea.Scalars("weights/source/b")] == [(2, 2.0)]
    assert "weights/source/c" not in ea.Tags()["scalars"]
