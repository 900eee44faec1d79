"""Naive references: the research scripts' approach to each weight probe, written fresh.

They exist to be timed beside Strata's probes (``benchmarks/run.py``), so they deliberately do
what the research notebook did (see ``../seeds/README.md``):

* the whole model is loaded through transformers (``AutoModelForCausalLM.from_pretrained``,
  bfloat16, CPU), then a float32 copy of every family of every layer is kept in a dict;
* per-pair Python loops for the adjacent cosines, per-head Python loops for the head metric,
  one dense SVD of the ``n × n`` internal-side cross product per pair (and null draw) for the
  Procrustes alignment, and an exact ``linear_sum_assignment`` on the full ``ff × ff`` neuron
  similarity for the MLP permutation.

Scope. Each reference computes at most what the research script computed, never more than the
Strata probe it stands beside, so speed-ups are conservative:

* ``adjacent``: adjacent-pair cos, ‖W‖_F per layer, the scale PCA (Strata: the whole L×L Gram
  plus the exact permutation-null moments, from the same single pass).
* ``head_metric``: per head ‖W_K W_Qᵀ‖ via SVD, top-k directions, signed eigenvalues of g + gᵀ
  via ``eig(J X Xᵀ)``, the L ≤ L' Gram by per-head loops (Strata: also the adjacent head × head
  Gram and exact singular vectors).
* ``gauge``: raw, orthogonally aligned and null-aligned cos per projection family and adjacent
  pair, permutation alignment of the MLP (same fields and draws as ``probes.gauge``, but exact
  assignment at every size, which is what makes it infeasible at ff ≈ 10k).

Because the dense-SVD / exact-assignment reference can run for hours on real shapes, each
reference takes ``budget_s``: after that many seconds of work it stops and extrapolates the
remaining units (each unit's measured time, or the largest measured unit of the same kind scaled
by n³ where a kind was never reached). The result says ``complete: false`` and gives both the
measured and the extrapolated seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch

FAMILIES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
            "input_ln", "post_attn_ln", "q_norm", "k_norm"]
PROJECTIONS = FAMILIES[:7]
MLP = ("gate_proj", "up_proj", "down_proj")
COLS_GAUGE = ("o_proj", "down_proj")   # internal side = columns


def load_model(path: str, device: str = "cpu"):
    """The whole model, as the research scripts loaded it (bfloat16, eager attention)."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map=device,
                                                 attn_implementation="eager")
    model.eval()
    return model


def float_copies(model, as_numpy: bool = True) -> dict[int, dict[str, object]]:
    """{layer: {family: float32 copy}} of every family of every layer."""
    layers = {}
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        entry = {"q_proj": attn.q_proj.weight, "k_proj": attn.k_proj.weight,
                 "v_proj": attn.v_proj.weight, "o_proj": attn.o_proj.weight,
                 "gate_proj": mlp.gate_proj.weight, "up_proj": mlp.up_proj.weight,
                 "down_proj": mlp.down_proj.weight, "input_ln": layer.input_layernorm.weight,
                 "post_attn_ln": layer.post_attention_layernorm.weight}
        if getattr(attn, "q_norm", None) is not None:
            entry["q_norm"] = attn.q_norm.weight
            entry["k_norm"] = attn.k_norm.weight
        layers[i] = {k: (v.detach().float().cpu().numpy() if as_numpy else v.detach().float())
                     for k, v in entry.items()}
    return layers


# -- adjacent similarity + scale schedule (null_residual.py's approach) -----------------------
@torch.no_grad()
def adjacent(path: str, device: str = "cpu", budget_s: float | None = None) -> dict:
    model = load_model(path, "cpu")
    num_layers = model.config.num_hidden_layers
    layers = float_copies(model)
    del model
    t0 = time.perf_counter()
    scales = {f: [float(np.linalg.norm(layers[L][f])) for L in range(num_layers)]
              for f in FAMILIES if f in layers[0]}
    sums = {f: [float(layers[L][f].sum()) for L in range(num_layers)] for f in scales}
    pairs = []
    for L in range(num_layers - 1):
        row = {}
        for f in scales:
            a, b = layers[L][f], layers[L + 1][f]
            cos = float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
            row[f] = {"cos": cos, "resid": math.sqrt(max(2 - 2 * cos, 0.0)),
                      "scalar_fit": math.sqrt(max(1 - cos * cos, 0.0))}
        pairs.append(row)
    logs = np.log(np.array([scales[f] for f in scales]))
    centred = logs - logs.mean(axis=1, keepdims=True)
    s = np.linalg.svd(centred, compute_uv=False)
    return {"complete": True, "work_s": time.perf_counter() - t0, "pairs": len(pairs),
            "mode1_share": float(s[0] ** 2 / max((s ** 2).sum(), 1e-30)),
            "sum_q0": sums.get("q_proj", [0])[0]}


# -- head metric (measure_grams.py's approach) ----------------------------------------------
@torch.no_grad()
def head_metric(path: str, device: str = "cpu", budget_s: float | None = None,
                topk: int = 8, pairs: str = "all") -> dict:
    model = load_model(path, "cpu")
    cfg = model.config
    num_layers, h, hidden = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size
    hd = getattr(cfg, "head_dim", hidden // h)
    kv = getattr(cfg, "num_key_value_heads", h)
    wq_list, wk_list = [], []
    for layer in model.model.layers:
        wq = layer.self_attn.q_proj.weight.detach().float().to(device).view(h, hd, hidden)
        wk = layer.self_attn.k_proj.weight.detach().float().to(device).view(kv, hd, hidden)
        wk_full = torch.zeros(h, hd, hidden, device=device)
        for head in range(h):
            wk_full[head] = wk[head * kv // h]
        wq_list.append(wq)
        wk_list.append(wk_full)
    del model
    t0 = time.perf_counter()
    k_eff = min(topk, hd)
    dirs = torch.zeros(num_layers, h, k_eff, hidden)
    fro_sq = torch.zeros(num_layers, h, dtype=torch.float64)
    sym = torch.zeros(num_layers, h, 2 * hd, dtype=torch.float64)
    eye = torch.eye(hd, device=device)
    for L in range(num_layers):
        for head in range(h):
            q, k = wq_list[L][head], wk_list[L][head]
            u, s, vh = torch.linalg.svd(k @ q.T)
            d = vh @ q
            dirs[L, head] = (d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12))[:k_eff].cpu()
            fro_sq[L, head] = float((s * s).sum())
            xxt = torch.zeros(2 * hd, 2 * hd, device=device)
            xxt[:hd, :hd], xxt[:hd, hd:] = q @ q.T, q @ k.T
            xxt[hd:, :hd], xxt[hd:, hd:] = k @ q.T, k @ k.T
            j = torch.zeros(2 * hd, 2 * hd, device=device)
            j[:hd, hd:], j[hd:, :hd] = eye, eye
            ev = torch.linalg.eigvals(j @ xxt).real.cpu().double()
            sym[L, head] = ev[torch.argsort(ev.abs(), descending=True)]
    gram = torch.zeros(num_layers, num_layers, h, dtype=torch.float64)
    for L in range(num_layers):
        # "adjacent": the same loop restricted to the pairs the claims use (L, L) and (L, L+1)
        for Lp in range(L, num_layers if pairs == "all" else min(L + 2, num_layers)):
            for head in range(h):
                a = wk_list[L][head] @ wk_list[Lp][head].T
                b = wq_list[L][head] @ wq_list[Lp][head].T
                gram[L, Lp, head] = gram[Lp, L, head] = float((a * b).sum())
    return {"complete": True, "work_s": time.perf_counter() - t0,
            "gram00": float(gram[0, 0, 0])}


# -- gauge alignment (dense Procrustes per pair, exact assignment) ----------------------------
class _Budget:
    """Counts work units per kind; stops after ``budget_s`` and extrapolates the rest."""

    def __init__(self, budget_s: float | None):
        self.budget_s = budget_s
        self.start = time.perf_counter()
        self.done: dict[str, list[float]] = {}
        self.size: dict[str, int] = {}
        self.todo: dict[str, int] = {}

    def plan(self, kind: str, size: int, count: int):
        self.size[kind] = size
        self.todo[kind] = self.todo.get(kind, 0) + count

    def over(self) -> bool:
        return self.budget_s is not None and time.perf_counter() - self.start > self.budget_s

    def record(self, kind: str, seconds: float):
        self.done.setdefault(kind, []).append(seconds)

    def report(self) -> dict:
        measured = time.perf_counter() - self.start
        remaining = 0.0
        method = {}
        for kind, total in self.todo.items():
            times = self.done.get(kind, [])
            left = total - len(times)
            if left <= 0:
                continue
            if times:
                per = float(np.median(times))
                method[kind] = f"median of {len(times)} measured"
            else:  # never reached: scale the largest measured kind of the same family by n³
                prefix = kind.split(":")[0]
                ref = [k for k in self.done if k.split(":")[0] == prefix]
                if not ref:
                    continue
                r = max(ref, key=lambda k: self.size[k])
                per = float(np.median(self.done[r])) * (self.size[kind] / self.size[r]) ** 3
                method[kind] = f"n³ scaling of {r}"
            remaining += per * left
        complete = all(len(self.done.get(k, [])) >= n for k, n in self.todo.items())
        return {"complete": complete, "work_s": measured,
                "extrapolated_work_s": measured + remaining, "extrapolation": method,
                "units_done": {k: len(v) for k, v in self.done.items()},
                "units_total": dict(self.todo)}


def _internal_major(w: torch.Tensor, family: str) -> torch.Tensor:
    return w.T if family in COLS_GAUGE else w


@torch.no_grad()
def gauge(path: str, device: str = "cpu", budget_s: float | None = None,
          draws: int | None = None, seed: int = 0) -> dict:
    from scipy.optimize import linear_sum_assignment
    if draws is None:
        from probes.gauge import MIN_NULL_DRAWS as draws  # what the probe needs on large models
    model = load_model(path, "cpu")
    num_layers = model.config.num_hidden_layers
    layers = float_copies(model, as_numpy=False)
    del model
    budget = _Budget(budget_s)
    hidden = layers[0]["q_proj"].shape[1]
    for f in PROJECTIONS:
        n = _internal_major(layers[0][f], f).shape[0]
        budget.plan(f"svd:{f}", n, (num_layers - 1) * (1 + draws))
    ff = layers[0]["gate_proj"].shape[0]
    budget.plan("lsa:mlp", ff, (num_layers - 1) * (1 + draws))
    out = {}
    for L in range(num_layers - 1):
        rng = np.random.default_rng([seed, L])
        perms = [torch.from_numpy(rng.permutation(hidden)) for _ in range(draws)]
        signs = [torch.from_numpy(rng.choice([-1.0, 1.0], size=hidden)).float()
                 for _ in range(draws)]
        for f in PROJECTIONS:
            a = _internal_major(layers[L][f], f).to(device)
            b = _internal_major(layers[L + 1][f], f).to(device)
            den = float(a.norm() * b.norm())
            raw = float((a * b).sum()) / den
            aligned = []
            for d in range(-1, draws):
                if budget.over():
                    return {**budget.report(), "aligned": out}
                t = time.perf_counter()
                bb = b if d < 0 else b[:, perms[d].to(device)] * signs[d].to(device)
                u, s, vh = torch.linalg.svd(bb @ a.T)          # dense n × n Procrustes
                rot = u @ vh
                aligned.append(float(((rot @ a) * bb).sum()) / den)
                budget.record(f"svd:{f}", time.perf_counter() - t)
            out[f"{L}/{f}"] = (raw, aligned[0], float(np.mean(aligned[1:] or [np.nan])))
        xa = torch.cat([_internal_major(layers[L][f], f) / layers[L][f].norm() for f in MLP], 1)
        for d in range(-1, draws):
            if budget.over():
                return {**budget.report(), "aligned": out}
            t = time.perf_counter()
            mb = {f: _internal_major(layers[L + 1][f], f) for f in MLP}
            if d >= 0:
                mb = {f: m[:, perms[d]] * signs[d] for f, m in mb.items()}
            xb = torch.cat([mb[f] / mb[f].norm() for f in MLP], 1)
            rows, cols = linear_sum_assignment((xa @ xb.T).numpy(), maximize=True)
            for f in MLP:
                a = _internal_major(layers[L][f], f)
                out.setdefault(f"{L}/{f}/perm", []).append(
                    float((a[rows] * mb[f][cols]).sum() / (a.norm() * mb[f].norm())))
            budget.record("lsa:mlp", time.perf_counter() - t)
    return {**budget.report(), "aligned": out}


def head_metric_adjacent(path: str, device: str = "cpu", budget_s: float | None = None) -> dict:
    """The head-metric reference on the pairs ``--head-gram=adjacent`` computes."""
    return head_metric(path, device, budget_s, pairs="adjacent")


REFERENCES = {"adjacent": adjacent, "head_metric": head_metric,
              "head_metric_adjacent": head_metric_adjacent, "gauge": gauge}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run one naive reference on a checkpoint directory")
    ap.add_argument("probe", choices=sorted(REFERENCES))
    ap.add_argument("checkpoint")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget-s", type=float, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = REFERENCES[args.probe](args.checkpoint, device=args.device, budget_s=args.budget_s)
    res.pop("aligned", None)
    import resource
    res["wall_s"] = time.perf_counter() - t0
    res["maxrss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
