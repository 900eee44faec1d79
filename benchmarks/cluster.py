"""``--cluster local:N`` against a serial run, side by side, and the scheduler's overhead per task.

    python -m benchmarks.cluster [--scenario zoo|activations|split|gauge|gauge-split ...]
                                 [--workers 2] [--checkpoint DIR] [--gauge-checkpoint DIR]
                                 [--calib-tokens N] [--repeats R] [--warmup]

Each scenario runs ``pytest hypotheses/...`` twice per repeat, in turn: serially with one thread
(``OMP_NUM_THREADS=1``) and with ``--cluster local:N`` (N workers, one thread each), both with
``--refresh-cache`` on one cache directory (probes recomputed, converted checkpoints reused), and
prints the wall times and their ratio, the CPU and the load. The records of the two runs are
compared (equal claims, models and verdicts; numbers to 1e-6 relative, since a split forward
sums the same tokens in another order). Scenarios:

* ``zoo``: every claim on the default model, two synthetic models, and their twins
  (``--calib-tokens``);
* ``activations``: the three activation claims on ``--checkpoint`` (Qwen3-4B shapes:
  ``python -m benchmarks.make_checkpoint --shape qwen3-4b``) and its twin, ``--calib-tokens``;
* ``split``: the three activation claims on ``--checkpoint`` alone (``--no-twin``), the
  cluster run with ``--cluster-split N`` (N = workers): one model's forward across the workers;
* ``gauge``: the two gauge claims on ``--gauge-checkpoint`` (else ``--checkpoint``, else the
  default model) and its twin; ``gauge-split``: on that model alone, the cluster run with
  ``--cluster-split N``.

Without ``--cluster-split`` a probe of one model is one task: the speed-up comes from the models
(a model and its twin are two) running side by side.

``overhead``: the scheduler's round trip per task, from 200 empty tasks on the same cluster shape.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from probes.machine import cpu_description

ROOT = Path(__file__).resolve().parents[1]
ACTIVATION_CLAIMS = ["hypotheses/test_phase_c_shared_subspace.py",
                     "hypotheses/test_phase_e_specialized.py",
                     "hypotheses/test_late_layers_change_least.py"]
GAUGE_CLAIMS = ["hypotheses/test_aligned_delta_e_exceeds_c.py",
                "hypotheses/test_gauge_delta_null.py"]


def scenario_args(name: str, opts) -> list[str]:
    if name == "zoo":
        return ["hypotheses/", "--model=smollm2-135m", "--model=synthetic:tiny-qwen3",
                "--model=synthetic:planted-adjacent", *_budget(opts)]
    if name in ("activations", "split"):
        if not opts.checkpoint:
            raise SystemExit(f"--scenario {name} needs --checkpoint DIR (Qwen3-4B shapes: "
                             "python -m benchmarks.make_checkpoint --shape qwen3-4b --tokenizer "
                             "DIR)")
        return [*ACTIVATION_CLAIMS, f"--model={opts.checkpoint}",
                *_budget(opts), *(["--no-twin"] if name == "split" else [])]
    if name == "gauge":
        return [*GAUGE_CLAIMS,
                f"--model={opts.gauge_checkpoint or opts.checkpoint or 'smollm2-135m'}"]
    if name == "gauge-split":
        return [*GAUGE_CLAIMS, "--no-twin",
                f"--model={opts.gauge_checkpoint or opts.checkpoint or 'smollm2-135m'}"]
    raise SystemExit(f"unknown scenario {name!r}")


def _budget(opts) -> list[str]:
    return [f"--calib-tokens={opts.calib_tokens}"] if opts.calib_tokens else []


def run(args: list[str], cache: Path, report: Path) -> float:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--refresh-cache",
           f"--cache-dir={cache}", f"--report-dir={report}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "STRATA_PROGRESS": "0"}
    if "MALLOC_TRIM_THRESHOLD_" in env:   # a serial run must not start with Dask's setting
        print(f"warning: MALLOC_TRIM_THRESHOLD_={env['MALLOC_TRIM_THRESHOLD_']} is set: glibc "
              f"then maps every buffer afresh; unset it for a fair baseline", file=sys.stderr)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if not (report / "verdicts.json").exists():
        raise SystemExit(f"run failed ({' '.join(args)}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return wall


def same_records(a: Path, b: Path, rtol: float = 1e-6) -> bool:
    """Equal claims, models, phases, families and verdicts; numbers equal to ``rtol``."""
    keep = ("claim", "model", "phase", "family", "observed", "effect", "ci", "p", "verdict")

    def rows(report):
        doc = json.loads((report / "verdicts.json").read_text())
        return sorted(({k: r[k] for k in keep} for r in doc["records"]),
                      key=lambda r: json.dumps([r["claim"], r["model"], r["phase"], r["family"]]))

    def close(x, y):
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            return len(x) == len(y) and all(map(close, x, y))
        if isinstance(x, float) and isinstance(y, float):
            return abs(x - y) <= rtol * max(1.0, abs(x))
        return x == y

    ra, rb = rows(a), rows(b)
    return len(ra) == len(rb) and all(close(x[k], y[k]) for x, y in zip(ra, rb) for k in keep)


def timeline(report: Path, longest: int = 6) -> list[str]:
    """The cluster run's tasks (``cluster-tasks.json`` beside its report): each worker's busy
    seconds and when it finished, and the longest tasks with their start and seconds."""
    path = report / "cluster-tasks.json"
    if not path.exists():
        return []
    tasks = json.loads(path.read_text())["tasks"]
    out = []
    for worker in sorted({t["worker"] for t in tasks}):
        mine = [t for t in tasks if t["worker"] == worker]
        end = max(t["start"] + t["compute_s"] + t["transfer_s"] for t in mine)
        out.append(f"  worker {worker}: {len(mine)} tasks, {sum(t['compute_s'] for t in mine):.1f}"
                   f" s computing, last done {end:.1f} s after submission")
    for t in sorted(tasks, key=lambda t: -t["compute_s"])[:longest]:
        out.append(f"  {t['compute_s']:7.1f} s from {t['start']:6.1f} s  {t['key']}")
    return out


def overhead(workers: int, tasks: int = 200) -> float:
    """Seconds per empty task, submitted together and gathered, on a local cluster."""
    from distributed import Client, LocalCluster

    from probes.cluster import environment_kept
    # kept: else Dask's spawn variables (MALLOC_TRIM_THRESHOLD_=65536) reach every pytest run
    # started after, the serial ones included
    with environment_kept():
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None,
                               memory_limit=0, scheduler_kwargs={"dashboard_address": ":0"})
    with cluster, Client(cluster) as client:
        client.gather(client.map(abs, range(tasks), pure=False))   # warm
        t0 = time.perf_counter()
        client.gather(client.map(abs, range(tasks, 2 * tasks), pure=False))
        return (time.perf_counter() - t0) / tasks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", action="append", choices=("zoo", "activations", "split", "gauge", "gauge-split"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--calib-tokens", type=int, default=None,
                    help="token budget of the activation and zoo scenarios (default: the whole "
                         "built-in corpus, 4,345 tokens)")
    ap.add_argument("--gauge-checkpoint", default=None,
                    help="model for the gauge scenario (default --checkpoint, else the default "
                         "model); Qwen3-4B shapes cut to a few layers: make_checkpoint --layers 7")
    ap.add_argument("--cluster-split", type=int, default=1,
                    help="--cluster-split for every scenario's cluster run (the split scenarios "
                         "use the number of workers)")
    ap.add_argument("--warmup", action="store_true",
                    help="one untimed serial run first (page cache, file hashes, conversions)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cache-dir", default=None,
                    help="cache holding converted checkpoints (default $STRATA_CACHE_DIR)")
    opts = ap.parse_args(argv)
    cache = Path(opts.cache_dir or os.environ.get("STRATA_CACHE_DIR")
                 or Path.home() / ".cache" / "strata")
    print(f"CPU: {cpu_description()}; load before: {os.getloadavg()[0]:.2f}")
    print(f"scheduler overhead: {overhead(opts.workers) * 1e3:.2f} ms per empty task "
          f"(local:{opts.workers}, 200 tasks)")
    for name in opts.scenario or ["zoo"]:
        args = scenario_args(name, opts)
        walls = {"serial": [], "cluster": []}
        split = opts.workers if name.endswith("split") else opts.cluster_split
        with tempfile.TemporaryDirectory() as tmp:
            if opts.warmup:
                run(args, cache, Path(tmp) / "warmup")
            for r in range(opts.repeats):
                for mode in ("serial", "cluster"):
                    extra = [] if mode == "serial" else [f"--cluster=local:{opts.workers}"]
                    if mode == "cluster" and split > 1:
                        extra.append(f"--cluster-split={split}")
                    walls[mode].append(run([*args, *extra], cache, Path(tmp) / f"{mode}{r}"))
            same = same_records(Path(tmp) / "serial0", Path(tmp) / "cluster0")
            tasks = timeline(Path(tmp) / f"cluster{opts.repeats - 1}")
        ratios = [s / c for s, c in zip(walls["serial"], walls["cluster"])]
        print(f"{name}: serial (1 thread) {', '.join(f'{w:.1f}' for w in walls['serial'])} s; "
              f"--cluster local:{opts.workers} (1 thread each"
              f"{'' if split < 2 else f', split {split}'}) "
              f"{', '.join(f'{w:.1f}' for w in walls['cluster'])} s; speed-up "
              f"{', '.join(f'{x:.2f}x' for x in ratios)}; records equal: {same}; "
              f"load after {os.getloadavg()[0]:.2f}")
        if tasks:
            print(f"{name}: the last cluster run's tasks (cluster-tasks.json):")
            print("\n".join(tasks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
