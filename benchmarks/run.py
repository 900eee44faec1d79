"""Time and measure Strata's weight probes against the naive references (SPEC §10).

    python -m benchmarks.run CHECKPOINT_DIR [--probes adjacent,head_metric,gauge]
        [--device cpu|cuda] [--skip-naive] [--naive-budget-s 900] [--twin] [--pytest]
        [--threads N] [--json OUT.json]

Every measurement is a fresh Python process (so peak RSS and import costs are the real ones):

* ``cold``: the probe with an empty cache directory (computes and stores the result);
* ``warm``: the same probe again, new process, same cache directory (a cache hit);
* ``all``: every available probe in one process, empty cache;
* ``naive``: the research scripts' approach to the same measurement (``benchmarks/naive.py``);
* ``--twin``: each probe cold on the random-init twin ``random:CHECKPOINT_DIR`` (tensors drawn
  on demand instead of read);
* ``--pytest``: ``pytest hypotheses/ --model=DIR -p no:cacheprovider`` with and without
  ``--no-twin`` on the cache the ``all`` run filled (then every weight probe is a cache hit).

Each child reports its own wall time, the seconds spent inside the probe (``compute``), and its
peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``, which counts memory-mapped
checkpoint pages while they are resident). The parent prints one table and, with ``--json``,
writes every number.

The probe list is a registry (:data:`PROBES`): an entry whose module is not importable, or lacks
the function it names, is skipped with a note. Each entry builds the same cache key as the
probe's pytest fixture (``fixtures/<probe>.py``), so the ``--pytest`` runs reuse these results.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from probes.machine import cpu_description

REPO = Path(__file__).resolve().parent.parent
MARK = "BENCH-RESULT "


# -- the probe registry --------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeEntry:
    """A weight probe: its module and how the pytest fixture calls it (same cache key)."""

    name: str
    module: str
    function: str
    describe: str
    # (module, model, device, seed) -> (probe_id, version, params, compute thunk)
    request: Callable
    naive: str | None   # name in benchmarks.naive.REFERENCES


def _adjacent_request(mod, model, device, seed):
    # fixtures/weights.py: params {}, adjacent.compute(model, device=...)
    return mod.PROBE_ID, mod.VERSION, {}, lambda: mod.compute(model, device=device)


def _head_metric_request(mod, model, device, seed, gram_pairs="all"):
    # fixtures/head_metric.py: params = head_metric.params(model, fold_norms=None,
    # gram_pairs=--head-gram)
    prm = mod.params(model, fold_norms=None, gram_pairs=gram_pairs)
    return mod.PROBE_ID, mod.VERSION, prm, lambda: mod.compute(
        model, fold_norms=prm["fold_norms"], topk=prm["topk"], device=device,
        gram_dtype=prm["gram_dtype"], gram_pairs=prm["gram_pairs"])


def _head_metric_adjacent_request(mod, model, device, seed):
    return _head_metric_request(mod, model, device, seed, gram_pairs="adjacent")


def _gauge_request(mod, model, device, seed):
    # fixtures/gauge.py: gauge.params(seed, device) is the key; the cost model's estimate
    # (probes.gauge_cost) is printed before the probe starts
    from probes import gauge_cost
    est = gauge_cost.estimate(gauge_cost.model_shapes(model), model.layout.num_layers, device)
    print(gauge_cost.describe_estimate(est), flush=True)
    return mod.PROBE_ID, mod.VERSION, mod.params(seed, device), lambda: mod.compute(
        model, seed=seed, device=device)


PROBES: dict[str, ProbeEntry] = {e.name: e for e in (
    ProbeEntry("adjacent", "probes.adjacent", "compute",
               "adjacent similarity + scale schedule (one streamed Gram pass per family)",
               _adjacent_request, "adjacent"),
    ProbeEntry("head_metric", "probes.head_metric", "compute",
               "per-head QK metric: cross-layer Gram, exact spectra", _head_metric_request,
               "head_metric"),
    ProbeEntry("head_metric_adjacent", "probes.head_metric", "compute",
               "the same with --head-gram=adjacent: Gram on adjacent pairs only (what the claims "
               "use), one pass", _head_metric_adjacent_request, "head_metric_adjacent"),
    ProbeEntry("gauge", "probes.gauge", "compute",
               "gauge alignment: orthogonal + MLP permutation, spectrum-preserving null",
               _gauge_request, "gauge"),
)}


def available(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The probes whose module imports and has its function; a note for each skipped one."""
    ok, notes = [], {}
    for name in names:
        entry = PROBES.get(name)
        if entry is None:
            notes[name] = f"unknown probe (registry: {', '.join(PROBES)})"
            continue
        try:
            mod = importlib.import_module(entry.module)
        except Exception as exc:  # not written yet, or broken
            notes[name] = f"skipped: cannot import {entry.module} ({type(exc).__name__}: {exc})"
            continue
        if not callable(getattr(mod, entry.function, None)):
            notes[name] = f"skipped: {entry.module} has no {entry.function}()"
            continue
        ok.append(name)
    return ok, notes


# -- child processes -----------------------------------------------------------------------
def _set_threads(threads: int | None):
    if threads:
        import torch
        torch.set_num_threads(threads)


class RssSampler:
    """Peak anonymous and file-backed resident memory of this process, sampled from
    /proc/self/status every ``interval`` s in a daemon thread (Linux; no-op elsewhere).

    ``ru_maxrss`` counts both; file-backed pages are the memory-mapped checkpoint, which the
    kernel can drop under pressure, so the anonymous peak is what a probe really needs."""

    def __init__(self, interval: float = 0.05):
        import threading
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self):
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    key = line.split(":", 1)[0]
                    if key in self.peak:
                        self.peak[key] = max(self.peak[key], int(line.split()[1]))
        except OSError:
            pass

    def _loop(self, interval):
        while not self._stop.wait(interval):
            self._sample()

    def stop(self) -> dict:
        self._stop.set()
        self._sample()
        return {"anon_gb": self.peak["RssAnon"] / 2**20, "file_gb": self.peak["RssFile"] / 2**20}


def open_spec(spec: str, cache):
    """``open_model`` plus ``tile:<L>:<dir>`` (see :func:`tiled`)."""
    from probes.models import open_model
    if spec.startswith("random:tile:"):  # the random-init twin at the tiled depth
        from probes.models.loaded import random_twin
        model = open_spec(spec[len("random:"):], cache)
        return random_twin(model.config, f"random:{model.spec}", None)
    if spec.startswith("tile:"):
        _, depth, base = spec.split(":", 2)
        return tiled(open_model(base, cache=cache), int(depth))
    return open_model(spec, cache=cache)


def tiled(base, num_layers: int):
    """``base`` stretched to ``num_layers`` layers by reusing its layers cyclically (layer l
    reads base layer l mod L₀).

    Every tensor has the real shape and is read through the same memory-mapped path, so a probe
    costs what it would on a real ``num_layers``-deep checkpoint with the same shapes — time,
    and the memory of everything that grows with depth — while the disk holds only L₀ layers.
    (Adjacent layers stay distinct when L₀ ≥ 2; layers L₀ apart are identical, which changes
    the numbers, not the work.) The page cache holds the L₀ layers' files after the first
    read, so the first pass over a real checkpoint, read from disk, can be slower.
    """
    import dataclasses
    from probes.models.loaded import LoadedModel

    @dataclasses.dataclass(eq=False)
    class Tiled(LoadedModel):
        base_layers: int = 1

        def weight(self, layer, family):
            return super().weight(layer % self.base_layers, family)

        def shape(self, layer, family):
            return super().shape(layer % self.base_layers, family)

        def weight_rows(self, layer, family, start, stop):
            return super().weight_rows(layer % self.base_layers, family, start, stop)

        def read_rows_into(self, layer, family, start, stop, out):
            return super().read_rows_into(layer % self.base_layers, family, start, stop, out)

        def layer_state(self, layer, dtype=None, reuse=None):
            return super().layer_state(layer % self.base_layers, dtype, reuse)

    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(LoadedModel)
              if f.init and not f.name.startswith("_")}
    fields.update(spec=f"tile:{num_layers}:{base.spec}",
                  fingerprint=f"{base.fingerprint}-tile{num_layers}",
                  layout=dataclasses.replace(base.layout, num_layers=num_layers),
                  config=_tiled_config(base.config, num_layers), hf_dir=None)
    return Tiled(base_layers=base.layout.num_layers, **fields)


def _tiled_config(config: dict, num_layers: int) -> dict:
    base_layers = config["num_hidden_layers"]
    out = {**config, "num_hidden_layers": num_layers}
    if isinstance(config.get("layer_types"), list):  # per-layer lists must match the depth
        out["layer_types"] = [config["layer_types"][i % base_layers] for i in range(num_layers)]
    return out


def child_strata(names: list[str], spec: str, cache_dir: str, device: str, seed: int) -> dict:
    """Run probes in this process through the cache; report times, cache hits, peak RSS."""
    import resource
    sampler = RssSampler()
    t_start = time.perf_counter()
    from probes.cache import Cache
    cache = Cache(cache_dir)
    model = open_spec(spec, cache)
    t_open = time.perf_counter()
    per_probe = {}
    for name in names:
        entry = PROBES[name]
        mod = importlib.import_module(entry.module)
        t0 = time.perf_counter()
        probe_id, version, params, compute = entry.request(mod, model, device, seed)
        result = cache.get_or_compute(probe_id, version, model.fingerprint, params, compute)
        if name == "adjacent":  # the scale schedule is read off the same result
            from probes import scale
            try:
                scale.low_dim(result)
            except Exception:  # N/A on too few layers: not a cost
                pass
        per_probe[name] = time.perf_counter() - t0
    return {"compute_s": sum(per_probe.values()), "per_probe_s": per_probe,
            "open_s": t_open - t_start, "hits": cache.hits, "misses": cache.misses,
            "maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            **sampler.stop()}


def child_pytest(args: list[str]) -> dict:
    import resource
    import pytest
    t0 = time.perf_counter()
    rc = pytest.main(args)
    return {"rc": int(rc), "compute_s": time.perf_counter() - t0,
            "maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _env(threads: int | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    return env


def spawn(cmd: list[str], threads: int | None, timeout: float | None = None,
          quiet: bool = True) -> dict:
    """Run a child, return its BENCH-RESULT dict plus the wall time measured here."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=_env(threads), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    result = None
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith(MARK):
            result = json.loads(line[len(MARK):])
            break
        if line.startswith("{") and line.endswith("}"):
            try:
                result = json.loads(line)
                break
            except ValueError:
                pass
    if result is None or proc.returncode not in (0, 1, 5) and "rc" not in result:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}", "wall_s": wall}
    result["wall_s"] = wall
    if not quiet:
        print(proc.stdout[-2000:])
    return result


def strata_cmd(names, spec, cache_dir, device, seed, threads) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.run", "--child", ",".join(names), "--model", spec,
           "--cache-dir", str(cache_dir), "--device", device, "--seed", str(seed)]
    return cmd + (["--threads", str(threads)] if threads else [])


def naive_cmd(name, checkpoint, device, budget) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.naive", name, str(checkpoint), "--device", device]
    return cmd + (["--budget-s", str(budget)] if budget else [])


# -- the table -------------------------------------------------------------------------------
def naive_seconds(r: dict | None) -> tuple[float | None, bool]:
    """Naive wall seconds (extrapolated when the budget stopped it) and whether extrapolated."""
    if not r or "error" in r:
        return None, False
    if r.get("complete", True):
        return r["wall_s"], False
    return r["wall_s"] + r["extrapolated_work_s"] - r["work_s"], True


def _fmt_s(r: dict | None) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return "error"
    return f"{r['wall_s']:.1f} ({r['compute_s']:.1f})"


def table(rows: list[dict]) -> str:
    head = ["probe", "cold s (probe)", "warm s (probe)", "peak RSS GB cold (anon) / warm", "naive s",
            "naive RSS GB", "speed-up"]
    lines = [head]
    for row in rows:
        cold, warm, naive = row.get("cold"), row.get("warm"), row.get("naive")
        ns, extrap = naive_seconds(naive)
        naive_s = "-" if naive is None else ("error" if ns is None else
                                             f"{'≈' if extrap else ''}{ns:.1f}{'*' if extrap else ''}")
        naive_rss = "-" if not naive or "error" in naive else f"{naive['maxrss_gb']:.2f}"
        speed = (f"{ns / cold['wall_s']:.1f}×" if ns and cold and "error" not in cold else "-")
        rss = "-" if not cold or "error" in cold else f"{cold['maxrss_gb']:.2f}"
        if cold and "anon_gb" in cold:
            rss += f" ({cold['anon_gb']:.2f})"
        if warm and "error" not in warm:
            rss += f" / {warm['maxrss_gb']:.2f}"
        lines.append([row["probe"], _fmt_s(cold), _fmt_s(warm), rss, naive_s, naive_rss, speed])
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(head))]
    out = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


# -- the benchmark ---------------------------------------------------------------------------
def run(args) -> dict:
    ckpt = str(Path(args.checkpoint).resolve())
    spec = f"tile:{args.tile}:{ckpt}" if args.tile else ckpt
    names = [p.strip() for p in args.probes.split(",") if p.strip()]
    names, notes = available(names)
    for name, note in notes.items():
        print(f"note: {name}: {note}")
    work = Path(tempfile.mkdtemp(prefix="strata-bench-"))
    report = {"checkpoint": ckpt, "device": args.device, "threads": args.threads,
              "cpus": os.cpu_count(), "notes": notes, "rows": [], "twin": [], "pytest": {}}
    args._report = report
    try:
        lay = open_spec(spec, None).layout
        report["layout"] = lay.__dict__
        report["spec"] = spec
        if args.tile:
            print(f"tiled: layer l reads layer l mod {open_spec(ckpt, None).layout.num_layers} "
                  f"of the checkpoint; naive references and --pytest need a real checkpoint "
                  f"and are skipped; --twin draws a twin of the tiled depth")
            args.skip_naive, args.pytest = True, False
        print(f"checkpoint {ckpt}: {lay.architecture}, {lay.num_layers} layers, hidden "
              f"{lay.hidden}, heads {lay.num_heads}/{lay.num_kv_heads}, head_dim {lay.head_dim}, "
              f"ff {lay.intermediate}; device {args.device}; "
              f"{args.threads or os.cpu_count()} threads", flush=True)
        rows = report["rows"]
        for name in names:
            cache = work / f"cache-{name}"
            row = {"probe": name}
            row["cold"] = spawn(strata_cmd([name], spec, cache, args.device, args.seed,
                                           args.threads), args.threads)
            row["warm"] = spawn(strata_cmd([name], spec, cache, args.device, args.seed,
                                           args.threads), args.threads)
            naive = PROBES[name].naive
            if not args.skip_naive and naive:
                row["naive"] = spawn(naive_cmd(naive, ckpt, args.device, args.naive_budget_s),
                                     args.threads)
            rows.append(row)
            _save(report, args.json)
            print(f"  {name}: cold {_fmt_s(row['cold'])}, warm {_fmt_s(row['warm'])}, "
                  f"naive {naive_seconds(row.get('naive'))[0]}", flush=True)
            shutil.rmtree(cache, ignore_errors=True)
        if names and not args.quick:
            all_cache = work / "cache-all"
            row = {"probe": "all (one process)"}
            row["cold"] = spawn(strata_cmd(names, spec, all_cache, args.device, args.seed,
                                           args.threads), args.threads)
            row["warm"] = spawn(strata_cmd(names, spec, all_cache, args.device, args.seed,
                                           args.threads), args.threads)
            naives = [r.get("naive") for r in rows]
            if not args.skip_naive and all(naive_seconds(n)[0] for n in naives):
                total = sum(naive_seconds(n)[0] for n in naives)
                extrap = any(naive_seconds(n)[1] for n in naives)
                row["naive"] = {"wall_s": total, "work_s": 0.0, "complete": not extrap,
                                "extrapolated_work_s": 0.0,
                                "maxrss_gb": max(n["maxrss_gb"] for n in naives)}
            rows.append(row)
            _save(report, args.json)
            if args.twin:
                for name in names:
                    cache = work / f"cache-twin-{name}"
                    r = spawn(strata_cmd([name], "random:" + spec, cache, args.device,
                                         args.seed, args.threads), args.threads)
                    report["twin"].append({"probe": name + " (twin)", "cold": r})
                    _save(report, args.json)
                    shutil.rmtree(cache, ignore_errors=True)
            if args.pytest:
                report["pytest"] = run_pytest(ckpt, all_cache, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _save(report: dict, path: Path | None):
    """Write the report so far (a long run killed midway keeps what it measured)."""
    if path is not None and report:
        path.write_text(json.dumps(report, indent=2, default=str))


def run_pytest(ckpt: str, cache: Path, args) -> dict:
    """Cached re-runs of the hypotheses (the 'all' run filled the cache): without twins, then
    with twins twice (the first computes the twins' probes unless --twin filled them)."""
    out = {}
    base = ["hypotheses/", f"--model={ckpt}", "-p", "no:cacheprovider", "-q",
            f"--cache-dir={cache}", f"--device={args.device}", "--report-dir",
            str(cache / "report")] + shlex.split(args.pytest_args or "")
    runs = [("no twin (cached)", base + ["--no-twin"]),
            ("with twins (first: computes twin probes)", base),
            ("with twins (cached)", base)]
    for label, pargs in runs:
        cmd = [sys.executable, "-m", "benchmarks.run", "--child-pytest", json.dumps(pargs)]
        out[label] = spawn(cmd, args.threads, timeout=args.pytest_timeout_s)
        _save({**getattr(args, "_report", {}), "pytest": out}, args.json)
        print(f"  pytest {label}: {_fmt_s(out[label])} s, rc {out[label].get('rc')}", flush=True)
    return out


def print_report(report: dict):
    rows = report["rows"] + report["twin"]
    print()
    print(table(rows))
    print("\ncold/warm: process wall s (seconds inside the probe); peak RSS: ru_maxrss of the "
          "cold run (its peak anonymous memory, i.e. without the memory-mapped checkpoint) / "
          "of the warm run; "
          "naive: process wall s, '≈…*' = extrapolated past --naive-budget-s; "
          "speed-up = naive s / cold s")
    for name, note in report["notes"].items():
        print(f"{name}: {note}")
    for row in rows:
        for key in ("cold", "warm", "naive"):
            r = row.get(key)
            if r and "error" in r:
                print(f"{row['probe']} {key}: {r['error']}")
            if key == "naive" and r and r.get("extrapolation"):
                print(f"{row['probe']} naive: stopped after {r['work_s']:.0f} s of work; "
                      f"units done {r['units_done']} of {r['units_total']}; "
                      f"extrapolated by {r['extrapolation']}")
    if report["pytest"]:
        print("\npytest hypotheses/ (cache filled by the 'all' run):")
        for label, r in report["pytest"].items():
            extra = "" if "error" in r else f", peak RSS {r['maxrss_gb']:.2f} GB, rc {r['rc']}"
            print(f"  {label}: {_fmt_s(r)} s{extra}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("--probes", default=",".join(PROBES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch/BLAS threads in every child (default: the library default)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--naive-budget-s", type=float, default=900.0,
                    help="stop a naive reference after this much work and extrapolate (0: never)")
    ap.add_argument("--twin", action="store_true", help="also time each probe on random:DIR")
    ap.add_argument("--tile", type=int, default=None, metavar="L",
                    help="measure the probes at depth L by reusing the checkpoint's layers "
                         "cyclically (e.g. a 3-layer checkpoint measured as 36 layers)")
    ap.add_argument("--quick", action="store_true",
                    help="cold and warm per probe only (no 'all' row, --twin or --pytest)")
    ap.add_argument("--pytest", action="store_true", help="also time cached pytest re-runs")
    ap.add_argument("--pytest-timeout-s", type=float, default=3600.0)
    ap.add_argument("--pytest-args", default=None,
                    help="extra pytest arguments, e.g. \"-k 'not gauge'\" (one string)")
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    ap.add_argument("--show", type=Path, default=None, metavar="JSON",
                    help="print the table of a report written earlier with --json, and exit")
    # child modes (used by the parent; not for direct use)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-pytest", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _set_threads(args.threads)
        res = child_strata(args.child.split(","), args.model, args.cache_dir, args.device,
                           args.seed)
        print(MARK + json.dumps(res), flush=True)
        return 0
    if args.child_pytest:
        res = child_pytest(json.loads(args.child_pytest))
        print(MARK + json.dumps(res), flush=True)
        return 0
    if args.show:
        print_report(json.loads(args.show.read_text()))
        return 0
    if not args.checkpoint:
        ap.error("CHECKPOINT_DIR is required")
    if args.naive_budget_s == 0:
        args.naive_budget_s = None
    machine = cpu_description()
    print(f"CPU: {machine}")
    report = run(args)
    report["machine"] = machine
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
