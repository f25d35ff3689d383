"""GBW's scale-free weights per class on source batches, averaged over the batches where the class
is present, next to its pixel share and its normalised statistic g_c^2 / mean g^2 (README, GBW).

    python benchmarks/probe_gbw_weights.py results/streets/source_only_s0/final.pt [batches]
"""
import sys, torch, numpy as np
from balda.config import resolve_config
from balda.config import load_config
from balda.models import build_model
from balda.models.weights import load_segmentor
from balda.balancing.class_weights import gbw_statistic, gbw_weights
from balda.data.loaders import build_train_loader
from balda.data.labels import CLASS_NAMES
from balda.methods.losses import resize_logits
torch.set_num_threads(1)
cfg = load_config(resolve_config("streets/self_training"), [])
model = build_model(cfg.model); load_segmentor(model, sys.argv[1]); model.train()
loader = build_train_loader(cfg)
K = 19; W = [[] for _ in range(K)]; n_all = np.zeros(K); pres = np.zeros(K); G2 = [[] for _ in range(K)]
it = iter(loader)
with torch.no_grad():
    for b in range(int(sys.argv[2]) if len(sys.argv) > 2 else 40):
        batch = next(it)
        x, y = batch["source"]["image"], batch["source"]["label"]
        z = resize_logits(model(x).logits, tuple(y.shape[-2:]))
        g = gbw_statistic(z, y)
        w = gbw_weights(g, 1.0, "scale_free")
        n = torch.bincount(y[y != 255].flatten(), minlength=K)[:K].numpy()
        n_all += n
        for c in range(K):
            if n[c] > 0:
                W[c].append(float(w[c])); pres[c] += 1; G2[c].append(float(g[c]**2 / (g**2).mean()))
share = n_all / n_all.sum()
order = np.argsort(share)
print(f"{'class':14s} share%  batches  w|present  g2/mean")
for c in order:
    print(f"{CLASS_NAMES[c][:13]:14s} {100*share[c]:6.2f} {int(pres[c]):5d}   {np.mean(W[c]) if W[c] else float('nan'):6.2f}   {np.mean(G2[c]) if G2[c] else float('nan'):6.2f}")
