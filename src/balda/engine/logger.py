"""Run logging: a rich progress bar with ETA and live losses, TensorBoard scalars and a JSON-lines
metrics log (``metrics.jsonl``), the single source that plots are drawn from.

Scalars arrive as device tensors and are accumulated on the device; they are synchronised with the
host only every ``log_every`` steps. Vectors (e.g. per-class weights) are logged per class name.
Each key is averaged over the steps that logged it. Per-class weights (``weights/<term>``, NaN for
a class absent from the batch, see :func:`balda.balancing.class_weights.logged_weights`) are
averaged over the steps where the class was present in ``metrics.jsonl``, and written to
TensorBoard at every step (kept on the device, sent at the flush: still one sync per flush).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch

from balda.data.labels import CLASS_NAMES


class _NullProgress:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def update(self, *a, **k):
        pass


class RunLogger:
    """Collects step logs; writes ``metrics.jsonl`` and TensorBoard events under ``run_dir``."""

    def __init__(
        self,
        run_dir: str | Path,
        total: int,
        start: int = 0,
        tensorboard: bool = True,
        progress: bool = True,
        enabled: bool = True,
        class_names=CLASS_NAMES,
        description: str = "train",
    ):
        self.run_dir = Path(run_dir)
        self.total, self.start = total, start
        self.enabled = enabled
        self.class_names = class_names
        self.path = self.run_dir / "metrics.jsonl"
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, torch.Tensor] = {}
        self._per_step: dict[str, list[tuple[int, torch.Tensor]]] = {}
        self._count = 0
        self._last_time = time.time()
        self._tb = None
        self._progress = None
        self._task = None
        self.latest: dict[str, float] = {}
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate(start)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=start + 1 if start > 0 else None)
            except Exception:  # pragma: no cover - tensorboard missing/broken
                self._tb = None
        if progress:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(description, total=total, completed=start, info="")

    def _truncate(self, start: int) -> None:
        """On resume from step ``start``, drop the records a killed run wrote after its checkpoint:
        steps after ``start``, and the acquisition records of step ``start`` (that round runs again,
        from its saved selection, before step ``start + 1``). Records of step ``start`` itself were
        written before the checkpoint and are not repeated, so they are kept."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            step = rec.get("step", -1)
            if step < start or (step == start and rec.get("kind") != "active"):
                keep.append(line)
        self.path.write_text("".join(l + "\n" for l in keep))

    # -- accumulation -------------------------------------------------------------------------
    #: Keys (prefixes) averaged NaN-aware in ``metrics.jsonl`` and written to TensorBoard every step.
    PER_STEP = ("weights/",)

    def accumulate(self, logs: dict[str, Any], step: Optional[int] = None) -> None:
        """Add one step's logs (``step``: its 1-based index, for the per-step TensorBoard points)."""
        for k, v in logs.items():
            t = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            if k.startswith(self.PER_STEP):
                if step is not None and self._tb is not None:
                    self._per_step.setdefault(k, []).append((step, t.clone()))
                n = torch.isfinite(t).float()
                t = torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
            else:
                n = torch.ones((), dtype=torch.float32, device=t.device)
            if k in self._sums:
                self._sums[k] = self._sums[k] + t
                self._counts[k] = self._counts[k] + n
            else:
                self._sums[k], self._counts[k] = t.clone(), n.clone()
        self._count += 1

    def _names(self, n: int):
        """Names of the entries of a logged vector: the class names for a per-class vector, else indices."""
        return self.class_names if n == len(self.class_names) else [str(i) for i in range(n)]

    def flush(self, step: int, extra: Optional[dict[str, float]] = None) -> dict[str, float]:
        """Average what was accumulated since the last flush (one host sync) and write it."""
        rec: dict[str, float] = {}
        for k, v in self._sums.items():
            c = self._counts[k]
            v = torch.where(c > 0, v / c.clamp(min=1), torch.full_like(v, float("nan"))).cpu()
            if v.numel() == 1:
                rec[k] = float(v)
            else:
                for name, x in zip(self._names(v.numel()), v.tolist()):
                    rec[f"{k}/{name}"] = float(x)
        now = time.time()
        if self._count:
            rec["time/step_s"] = (now - self._last_time) / self._count
        self._last_time = now
        if extra:
            rec.update(extra)
        if self._tb is not None:
            for k, points in self._per_step.items():
                vals = torch.stack([t.reshape(-1) for _, t in points]).cpu()
                names = self._names(vals.shape[1])
                for (s_, _), row in zip(points, vals.tolist()):
                    for name, x in zip(names, row):
                        if math.isfinite(x):
                            self._tb.add_scalar(f"{k}/{name}", x, s_)
        per_step = tuple(self._per_step)
        self._sums, self._counts, self._per_step, self._count = {}, {}, {}, 0
        self.write(step, rec, tb_skip=per_step)
        return rec

    def write(self, step: int, rec: dict[str, float], kind: str = "train", tb_skip: tuple[str, ...] = ()) -> None:
        """Append ``rec`` to ``metrics.jsonl`` and TensorBoard (keys under a ``tb_skip`` prefix: file only,
        their TensorBoard points were written step by step)."""
        self.latest.update(rec)
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "kind": kind,
                        **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()},
                    }
                )
                + "\n"
            )
        if self._tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and math.isfinite(v) and not (tb_skip and k.startswith(tb_skip)):
                    tag = k if kind == "train" or k.startswith(f"{kind}/") else f"{kind}/{k}"
                    self._tb.add_scalar(tag, v, step)

    def progress(self, step: int) -> None:
        if self._progress is None:
            return
        keys = [k for k in self.latest if k.startswith("loss/")][:4]
        info = " ".join(f"{k[5:]}={self.latest[k]:.3g}" for k in keys)
        if "eval/miou" in self.latest:
            info += f" mIoU={100 * self.latest['eval/miou']:.1f}"
        self._progress.update(self._task, completed=step, info=info)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def read_metrics(run_dir: str | Path, kind: Optional[str] = None) -> list[dict]:
    """Read ``metrics.jsonl`` of a run (skipping a line cut by a kill)."""
    path = Path(run_dir) / "metrics.jsonl"
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if kind is None or rec.get("kind") == kind:
                out.append(rec)
    return out
