import torch

from balda.engine.trainer import Trainer
from balda.methods.cpsl import distill_losses


def test_kl_and_confident_ce_match_float64_reference():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 5, 4, 6, generator=g, dtype=torch.float64) * 3
    s = torch.randn(2, 5, 4, 6, generator=g, dtype=torch.float64)
    d = distill_losses(s, t, threshold=0.6)
    pt, ps = t.softmax(1), s.softmax(1)
    kl = (pt * (pt.log() - ps.log())).sum(1).mean()
    conf, lab = pt.max(1)
    mask = conf >= 0.6
    ce = -(ps.log().gather(1, lab[:, None])[:, 0][mask]).mean()
    assert torch.allclose(d.kl.double(), kl, rtol=1e-5) and torch.allclose(d.ce.double(), ce, rtol=1e-5)


def test_distill_stage_trains_a_fresh_student_from_a_frozen_teacher(tiny_config):
    teacher_cfg = tiny_config("streets/source_only", iters=2, name="teacher")
    Trainer(teacher_cfg).fit()
    cfg = tiny_config("streets/cpsl_distill", f"method.distill.teacher={teacher_cfg.run_dir}", iters=2, name="student")
    tr = Trainer(cfg)
    before = {k: v.clone() for k, v in tr.strategy.teacher.state_dict().items()}
    it = iter(tr._loader())
    out = tr.strategy.compute_losses(tr.model, next(it), 0)
    assert set(out.losses) == {"source.ce", "target.ce", "target.kl"} and out.task == ("source.ce",)
    assert all(not p.requires_grad for p in tr.strategy.teacher.parameters())
    tr.fit()
    after = tr.strategy.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (cfg.run_dir / "final_metrics.json").is_file()
