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
