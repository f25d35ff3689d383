"""Data-parallel training on CPU: 2 gloo processes train exactly like 1 process on the same global batch.

The workers are started with ``torch.multiprocessing`` (fork) and meet through a ``file://`` store in
the test's temporary folder (no network port); the CLI test launches ``torchrun`` with a c10d
rendezvous on 127.0.0.1. BatchNorm: plain BN normalises with per-rank batch statistics and
``SyncBatchNorm`` does not run on CPU tensors, so the equality runs keep every BatchNorm layer in
eval mode (running statistics; the layers' affine parameters still train). Weights are compared to
the one-process run within float tolerance (reduction orders differ); the ranks' replicas must be
bit-identical. The float64 mechanism checks (global loss normalisation with uneven ignored pixels,
GBW statistic, per-item random draws) are exact. CPSL is not covered (its Sinkhorn assignments and
memory banks are per rank by design, see balda.core.dist).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import traceback
import types
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch.nn.modules.batchnorm import _BatchNorm

from balda.config import ConfigError
from tests.conftest import tiny_overrides

STEPS = 3
WORLD = 2

#: name -> (config, overrides); global batches of 4 source and 4 target crops (2 per rank).
CASES = {
    "source_only": ("streets/source_only", []),
    "self_training_gbw": ("streets/self_training", ["balancing.class_weights=gbw", "balancing.gbw.mode=scale_free"]),
    "advent": ("streets/advent", ["method.adversarial.lambda_adv=0.01"]),
    "advent_gh": ("streets/advent", ["method.adversarial.lambda_adv=0.01", "balancing.combiner=gh"]),
    "minent_pcgrad_decoder": (
        "streets/minent",
        ["balancing.combiner=pcgrad", "balancing.gh.params=decoder", "method.minent.lambda_ent=0.1"],
    ),
}


def _config(data: Path, out: Path, case: str, *extra: str):
    from balda.config import load_config, resolve_config

    config, over = CASES[case]
    return load_config(
        resolve_config(config),
        tiny_overrides(data, out, case, iters=STEPS)
        + ["data.batch_source=4", "data.batch_target=4", "train.device=cpu", "optim.warmup_iters=0", *over, *extra],
    )


def _freeze_bn(model: torch.nn.Module) -> None:
    """Keep every BatchNorm layer in eval mode, whatever ``model.train()`` asks."""
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.train = types.MethodType(lambda self, mode=True: torch.nn.Module.train(self, False), m)
            m.eval()


def _train(cfg) -> dict:
    """``STEPS`` training steps (the loop of Trainer.fit without evaluation); the final states."""
    from balda.engine.trainer import Trainer

    tr = Trainer(cfg, progress=False)
    _freeze_bn(tr.model)
    loader = iter(tr._loader())
    for _ in range(STEPS):
        tr.train_step(next(loader))
        tr.step += 1
    return {
        "model": {k: v.detach().clone() for k, v in tr.model.state_dict().items()},
        "strategy": {k: v.detach().clone() for k, v in tr.strategy.state_dict().items() if isinstance(v, torch.Tensor)},
    }


def _global_batch():
    """A fixed global batch whose items have very different numbers of ignored pixels."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 6, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (4, 6, 8), generator=g)
    for i, frac in enumerate((0.0, 0.9, 0.3, 0.7)):  # rank 0 holds items 0, 2; rank 1 items 1, 3
        labels[i].view(-1)[: int(frac * 48)] = 255
    cw = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    pw = torch.rand(4, 6, 8, generator=g, dtype=torch.float64)
    return logits, labels, cw, pw


def _mechanisms(rank: int) -> dict:
    """Per-mechanism errors between the sharded computation and the one-process one (float64)."""
    from balda.balancing.class_weights import gbw_statistic
    from balda.core import dist
    from balda.methods.augment import batch_rand
    from balda.methods.losses import weighted_cross_entropy

    logits, labels, cw, pw = _global_batch()
    # a shared parameter (a per-class bias of the logits), as DDP averages parameter gradients
    b_full = torch.zeros(1, 5, 1, 1, dtype=torch.float64, requires_grad=True)
    loss_full = weighted_cross_entropy(logits + b_full, labels, class_weights=cw, pixel_weights=pw)
    loss_full.backward()
    g_full = gbw_statistic(logits, labels)
    r_full = torch.rand(4, 7, generator=torch.Generator().manual_seed(5))
    sl = slice(rank, None, WORLD)
    b = torch.zeros(1, 5, 1, 1, dtype=torch.float64, requires_grad=True)
    with dist.sharded_step():
        assert dist.in_sharded_step()
        loss = weighted_cross_entropy(logits[sl] + b, labels[sl], class_weights=cw, pixel_weights=pw[sl])
        g = gbw_statistic(logits[sl], labels[sl])
        r = batch_rand(2, 7, torch.Generator().manual_seed(5), "cpu")
        nan_here = torch.tensor(float("nan") if rank == 1 else 1.0)
        agreed = bool(dist.all_true(torch.isfinite(nan_here)))
    loss.backward()
    grad = dist.all_reduce_mean_([b.grad])[0]  # what DDP does with the parameters' gradients
    total = dist.all_reduce_mean(loss.detach())  # the mean of the rank losses is the global loss
    return {
        "ce_grad": (grad - b_full.grad).abs().max().item(),
        "ce_loss": (total - loss_full).abs().item(),
        "gbw": (g - g_full).abs().max().item(),
        "rand": (r - r_full[sl]).abs().max().item(),
        "finite_agreed_false": not agreed,
    }


def _worker(rank: int, store: str, data: str, out: str, cases: list[str]) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120)
    )
    try:
        mech = _mechanisms(rank)
        marker = Path(out) / "main_first.txt"

        def first():  # rank 0 writes after a delay; the other rank must only run after it
            if rank == 0:
                time.sleep(0.3)
                marker.write_text("rank 0")
            return marker.exists()

        from balda.core import dist

        mech["main_first_ordered"] = dist.main_first(first)
        torch.save(mech, Path(out) / f"mechanisms.rank{rank}.pt")
        for case in cases:
            torch.save(
                _train(_config(Path(data), Path(out) / f"rank{rank}", case)), Path(out) / f"{case}.rank{rank}.pt"
            )
        # a global batch that does not split over the ranks is a config error naming the key
        try:
            from balda.engine.trainer import Trainer

            Trainer(_config(Path(data), Path(out) / f"rank{rank}", "source_only", "data.batch_source=3"))
            msg = "no error"
        except ConfigError as e:
            msg = f"ConfigError: {e}"
        (Path(out) / f"batch_error.rank{rank}.txt").write_text(msg)
    except BaseException:
        (Path(out) / f"error.rank{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        torch_dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs(tiny_streets, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    store = out / "store"
    try:
        # fork: the workers inherit the imported modules (a spawned worker would re-import torch and balda)
        mp.start_processes(
            _worker,
            args=(str(store), str(tiny_streets), str(out), list(CASES)),
            nprocs=WORLD,
            join=True,
            start_method="fork",
        )
    except Exception:
        errors = "\n".join(p.read_text() for p in sorted(out.glob("error.rank*.txt")))
        pytest.fail(f"DDP workers failed:\n{errors[-4000:]}")
    return out


def _assert_close(a: dict, b: dict, what: str, atol=1e-5, rtol=1e-4) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=lambda m, k=k: f"{what} {k}: {m}")
        else:
            assert torch.equal(a[k], b[k]), f"{what} {k}"


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one_process(ddp_runs, tiny_streets, tmp_path, case):
    """Same global batches -> the 2-rank weights (and teacher / discriminator / GBW state) equal the
    1-process ones within float tolerance, and the two ranks hold bit-identical replicas."""
    r0 = torch.load(ddp_runs / f"{case}.rank0.pt", weights_only=False)
    r1 = torch.load(ddp_runs / f"{case}.rank1.pt", weights_only=False)
    for part in ("model", "strategy"):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), f"ranks differ: {part} {k}"
    # the ranks train single-threaded: so does the reference, or the thread count changes float
    # reduction order, and GH's switch at d = 0 can turn a last-bit difference into a different update
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = _train(_config(tiny_streets, tmp_path, case))
    finally:
        torch.set_num_threads(threads)
    _assert_close(ref["model"], r0["model"], f"{case} model")
    _assert_close(ref["strategy"], r0["strategy"], f"{case} strategy")


def test_sharded_losses_statistics_and_randomness_match_one_process(ddp_runs):
    """Global CE normalisation with uneven ignored pixels, GBW statistic, per-item random draws and the
    non-finite check: the sharded versions equal the one-process ones (float64, no training noise)."""
    for r in range(WORLD):
        m = torch.load(ddp_runs / f"mechanisms.rank{r}.pt", weights_only=False)
        assert m.pop("finite_agreed_false"), "a NaN on one rank must make every rank skip"
        assert m.pop("main_first_ordered")
        assert all(v < 1e-12 for v in m.values()), m


def test_training_moved_the_weights(ddp_runs, tiny_streets, tmp_path):
    """Guard against a vacuous equality: the compared runs did change the weights."""
    from balda.models import build_model

    cfg = _config(tiny_streets, tmp_path, "source_only")
    torch.manual_seed(cfg.train.seed)
    init = build_model(cfg.model).state_dict()
    r0 = torch.load(ddp_runs / "source_only.rank0.pt", weights_only=False)["model"]
    moved = [k for k in init if init[k].is_floating_point() and not torch.equal(init[k], r0[k])]
    assert len(moved) > 10


def test_indivisible_global_batch_is_a_config_error(ddp_runs):
    for r in range(WORLD):
        msg = (ddp_runs / f"batch_error.rank{r}.txt").read_text()
        assert msg.startswith("ConfigError") and "data.batch_source" in msg, msg


# ------------------------------------------------------------------------------ rank split (no processes)
def test_rank_shares_partition_the_global_batch():
    from balda.data.loaders import StepBatchSampler

    full = StepBatchSampler(7, 6, seed=3, stream=0)
    for world in (1, 2, 3, 6):
        shares = [StepBatchSampler(7, 6, seed=3, stream=0, rank=r, world_size=world) for r in range(world)]
        for step in (0, 1, 5):
            glob = full.batch_at(step)
            for r, s in enumerate(shares):
                assert s.batch_at(step) == glob[r::world]
    with pytest.raises(ValueError, match="divisible"):
        StepBatchSampler(7, 5, seed=0, stream=0, rank=0, world_size=2)


def test_check_global_batch_names_the_key(tiny_config):
    from balda.data.loaders import check_global_batch

    cfg = tiny_config("streets/source_only", "data.batch_source=4", "data.batch_target=6")
    check_global_batch(cfg, 2)
    with pytest.raises(ConfigError, match="data.batch_target"):
        check_global_batch(cfg, 4)
    with pytest.raises(ConfigError, match="data.batch_source"):
        check_global_batch(cfg, 3)


def test_single_process_helpers_are_identities():
    from balda.core import dist

    x = torch.arange(6.0).view(3, 2)
    assert not dist.in_sharded_step()
    with dist.sharded_step():  # no process group: stays a single-process step
        assert not dist.in_sharded_step()
        assert dist.shard_rows(x) is x and dist.global_rows(3) == 3
    assert torch.equal(dist.global_mean(torch.tensor(6.0), torch.tensor(4)), torch.tensor(1.5))
    assert torch.equal(dist.global_mean(torch.tensor(0.0), torch.tensor(0)), torch.tensor(0.0))
    assert dist.all_reduce_mean_([x, None]) == [x, None]


# ----------------------------------------------------------------------------------------- torchrun CLI
def test_torchrun_cli_two_processes(tiny_streets, tmp_path):
    """`torchrun --nproc_per_node=2 -m balda.cli train ...` on CPU: finishes, rank 0 alone writes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:0",
        "--rdzv-id=balda-test",
        "-m",
        "balda.cli",
        "train",
        "streets/source_only",
        *tiny_overrides(tiny_streets, tmp_path, "tr", iters=2),
        "data.batch_source=4",
        "data.batch_target=4",
        "train.device=cpu",
        "--no-progress",
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    run = tmp_path / "tr"
    for f in ("config.yaml", "last.pt", "final.pt", "final_metrics.json", "metrics.jsonl"):
        assert (run / f).is_file(), f
    ck = torch.load(run / "final.pt", map_location="cpu", weights_only=False)
    assert ck["step"] == 2
    assert res.stdout.count("run written to") == 1  # the summary is printed by rank 0 only
    assert not list(run.glob(".*.tmp"))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["kind"]) for r in lines] == [(1, "train"), (2, "train"), (2, "eval")]  # one writer
