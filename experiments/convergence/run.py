"""Results at convergence: the IWAE estimator table and the component zoo at a truncated paper schedule.

    PYRO_VAE_DATA=/path/to/data python experiments/convergence/run.py train vae_k1 iwae_k5
    PYRO_VAE_DATA=/path/to/data python experiments/convergence/run.py evaluate vae_k1
    python experiments/convergence/run.py report
    python experiments/convergence/run.py status

Every row is one ``pyro-vae train`` run directory under ``runs/ROW`` (config, checkpoint, metrics),
kept in the repository while it is in progress, so that ``train ROW`` continues it with ``--resume`` on
any machine. ``train`` restarts a run that stopped for a reason other than a user error (a killed
process, a signal) until it has all its epochs. ``evaluate`` scores L_5000 on all 10,000 test images in
chunks, writing ``results/ROW.json`` (per-image values) after every chunk, so it resumes too. CPU time
(user + system of the child processes) is added up per row and step in ``cpu_seconds.json``; time spent on
a GPU machine is kept apart there (``train_gpu``: CPU seconds of the process driving the GPU,
``train_gpu_wall``: its wall-clock seconds, ``train_gpu_host``: rows trained on that machine's CPU cores),
and ``segments.jsonl`` records each training process: which epochs, on what machine, CPU and wall seconds. ``--until SECONDS`` ends ``train`` and ``evaluate`` after that
much wall-clock time: training is interrupted with SIGINT, which writes a mid-epoch checkpoint, so the next
``train ROW`` continues exactly there (on any machine); evaluation stops between chunks.
``report`` writes ``results/tables.md`` and ``figures/curves.png`` from whatever is finished.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
RESULTS = HERE / "results"
FIGURES = HERE / "figures"
CPU = HERE / "cpu_seconds.json"
SEGMENTS = HERE / "segments.jsonl"  # one line per training process: row, epochs, machine, CPU and wall seconds

#: row -> (spec file, overrides). Table 1 of Burda et al. (2015) rows, then the zoo.
ROWS: dict[str, tuple[str, list[str]]] = {
    "vae_k1": ("iwae.yaml", ["elbo.kind=trace", "elbo.num_particles=1"]),
    "meanfield_k1": ("iwae.yaml", ["elbo.kind=meanfield", "elbo.num_particles=1"]),
    "iwae_k5": ("iwae.yaml", ["elbo.kind=iwae", "elbo.num_particles=5"]),
    "vae_k5": ("iwae.yaml", ["elbo.kind=trace", "elbo.num_particles=5"]),
    "stl_k1": ("iwae.yaml", ["elbo.kind=stl", "elbo.num_particles=1"]),
    "dreg_k5": ("iwae.yaml", ["elbo.kind=dreg", "elbo.num_particles=5"]),
    "iwae_k50": ("iwae.yaml", ["elbo.kind=iwae", "elbo.num_particles=50"]),
    "vae_k50": ("iwae.yaml", ["elbo.kind=trace", "elbo.num_particles=50"]),
    # a second training seed of vae_k1 (same test binarization): how far two training runs differ
    "vae_k1_seed1": ("iwae.yaml", ["elbo.kind=trace", "elbo.num_particles=1", "seed=1"]),
    "zoo_standard": ("zoo.yaml", []),
    "zoo_learned": ("zoo.yaml", ["model.prior.kind=learned_normal"]),
    "zoo_mixture": ("zoo.yaml", ["model.prior.kind=mixture"]),
    "zoo_vamp": ("zoo.yaml", ["model.prior.kind=vamp"]),
    "zoo_flow_prior": ("zoo.yaml", ["model.prior.kind=flow"]),
    "zoo_full_rank": ("zoo.yaml", ["guide.kind=full_rank"]),
    "zoo_low_rank": ("zoo.yaml", ["guide.kind=low_rank"]),
    "zoo_flow_guide": ("zoo.yaml", ["guide.kind=flow"]),
}
#: row -> (finished row it continues, epochs): the same run carried past the truncated schedule. Its run
#: directory starts as a copy of the finished row's, so the 364-epoch row and its scores stay as they are.
EXTENDS: dict[str, tuple[str, int]] = {
    "vae_k1_stage6": ("vae_k1", 1093),
    "iwae_k5_stage6": ("iwae_k5", 1093),
}
ROWS.update({row: ROWS[src] for row, (src, _) in EXTENDS.items()})
EVAL_PARTICLES = 5000
EVAL_CHUNK = 250  # test images per saved chunk of the L_5000 evaluation
#: restart the evaluation process above this resident set (GiB); the chunks done so far are kept
EVAL_RSS_GIB = 8.0
GRACE = 120.0  # seconds between the SIGINT at --until's limit and a second one


def _cpu_add(row: str, step: str, seconds: float) -> None:
    """Add ``seconds`` to ``cpu_seconds.json[row][step]``; rows trained in parallel processes share the file."""
    with open(CPU.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = json.loads(CPU.read_text()) if CPU.exists() else {}
        doc.setdefault(row, {}).setdefault(step, 0.0)
        doc[row][step] = round(doc[row][step] + seconds, 1)
        tmp = CPU.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        tmp.replace(CPU)


def _machine() -> str:
    """The machine a row trains on, in words: the GPU's name, else the number of CPU cores."""
    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name()}"
    return f"CPU, {os.cpu_count()} cores"


def _segment(row: str, first: int, last: int, cpu_s: float, wall_s: float) -> None:
    """Append one training process's record to ``segments.jsonl`` (which epochs ran where, at what cost)."""
    rec = {"row": row, "epochs": [first, last], "machine": _machine(), "threads": int(os.environ.get("OMP_NUM_THREADS", "1")),
           "cpu_s": round(cpu_s, 1), "wall_s": round(wall_s, 1), "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    with open(SEGMENTS, "a") as f:
        f.write(json.dumps(rec) + "\n")


def _on_gpu() -> bool:
    """Whether ``train.device: auto`` (the specs' setting) picks a CUDA device on this machine."""
    import torch

    return torch.cuda.is_available()


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def epochs_done(row: str) -> int:
    metrics = RUNS / row / "metrics.jsonl"
    if not metrics.exists():
        return 0
    lines = [json.loads(s) for s in metrics.read_text().splitlines() if s.strip()]
    return max((int(r["epoch"]) for r in lines), default=0)


def epochs_wanted(row: str, epochs: int | None = None) -> int:
    """``epochs`` when given, else the row's run directory's (a resumed run may have been extended), else the spec's."""
    import yaml

    if epochs is not None:
        return epochs
    if row in EXTENDS:
        return EXTENDS[row][1]
    cfg = RUNS / row / "config.yaml"
    spec = cfg if cfg.exists() else HERE / ROWS[row][0]
    return int(yaml.safe_load(spec.read_text())["train"]["epochs"])


def _branch(row: str) -> str | None:
    """Start ``row``'s run directory as a copy of the finished row it continues (``EXTENDS``); the reason
    it cannot, else None."""
    src, _ = EXTENDS[row]
    if epochs_done(src) < epochs_wanted(src) or not (RUNS / src / "checkpoint.pt").exists():
        return f"{row} continues {src}, which has trained {epochs_done(src)} of {epochs_wanted(src)} epochs: train {src} first"
    tmp = RUNS / f".{row}.copy"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("config.yaml", "checkpoint.pt", "metrics.jsonl", "summary.json"):
        if (RUNS / src / name).exists():
            shutil.copy2(RUNS / src / name, tmp / name)
    tmp.rename(RUNS / row)
    return None


def _run_until(cmd: list[str], env: dict[str, str], deadline: float | None) -> tuple[int, bool]:
    """Run ``cmd``; past ``deadline`` (a ``time.monotonic()`` value) interrupt it with SIGINT, which makes
    ``pyro-vae train`` finish its step, write a checkpoint and stop; a second SIGINT ``GRACE`` seconds later
    makes it exit at once (the last checkpoint stays). Returns the exit status and whether it was interrupted."""
    proc = subprocess.Popen(cmd, env=env)
    signals = 0
    while True:
        if deadline is None:
            return proc.wait(), False
        try:
            return proc.wait(timeout=max(deadline + signals * GRACE - time.monotonic(), 0.01)), signals > 0
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            signals += 1


def train(
    rows: list[str], tries: int, epochs: int | None = None, until: float | None = None, time_key: str | None = None
) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    deadline = None if until is None else time.monotonic() + until
    step = time_key or ("train_gpu" if _on_gpu() else "train")
    for row in rows:
        spec, sets = ROWS[row]
        if row in EXTENDS and not (RUNS / row).exists():
            why = _branch(row)
            if why:
                print(why, flush=True)
                return 2
        row_epochs = epochs if epochs is not None else EXTENDS[row][1] if row in EXTENDS else None
        for attempt in range(tries):
            if deadline is not None and time.monotonic() >= deadline:
                print(f"{row}: out of time (--until) at epoch {epochs_done(row)}", flush=True)
                return 0
            if (RUNS / row / "summary.json").exists() and epochs_done(row) >= epochs_wanted(row, row_epochs):
                print(f"{row}: done ({epochs_done(row)} epochs)", flush=True)
                break
            resume = (RUNS / row / "checkpoint.pt").exists()
            cmd = [sys.executable, "-m", "pyro_vae", "train", str(HERE / spec), "--out", str(RUNS / row)]
            cmd += [a for s in sets for a in ("--set", s)] + (["--resume"] if resume else ["--force"])
            if row_epochs is not None:  # e.g. 1093: continue through stage 6 of the schedule
                cmd += ["--set", f"train.epochs={row_epochs}"]
            print(f"{row}: {'resuming at epoch ' + str(epochs_done(row)) if resume else 'starting'} "
                  f"(attempt {attempt + 1})", flush=True)  # fmt: skip
            before, t0, first = _children_cpu(), time.perf_counter(), epochs_done(row)
            rc, interrupted = _run_until(cmd, env, deadline)
            cpu_s, wall_s = _children_cpu() - before, time.perf_counter() - t0
            _cpu_add(row, step, cpu_s)
            if step == "train_gpu":
                _cpu_add(row, "train_gpu_wall", wall_s)
            _segment(row, first, epochs_done(row), cpu_s, wall_s)
            if interrupted:
                print(f"{row}: interrupted at the time limit (--until) in epoch {epochs_done(row) + 1}; "
                      "train ROW resumes it", flush=True)  # fmt: skip
                return 0
            if rc == 2:  # a user error (spec, data): retrying cannot help
                print(f"{row}: stopped with a user error; see above", flush=True)
                return 2
            if rc == 0 and epochs_done(row) >= epochs_wanted(row, row_epochs):
                break
            time.sleep(5)
    return 0


def _rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def evaluate(
    rows: list[str], which: str, device: str = "cpu", until: float | None = None, partial: bool = False
) -> int:
    import torch

    from pyro_vae.evaluation import point_terms
    from pyro_vae.rundir import load_run

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    RESULTS.mkdir(exist_ok=True)
    deadline = None if until is None else time.monotonic() + until
    for row in rows:
        out = RESULTS / f"{row}.json"
        doc = json.loads(out.read_text()) if out.exists() else None
        if epochs_done(row) < epochs_wanted(row) and not partial:
            print(f"{row}: trained {epochs_done(row)} of {epochs_wanted(row)} epochs; not scored "
                  "(train it first, or --partial)", flush=True)  # fmt: skip
            continue
        run = load_run(RUNS / row, device=device, which=which)
        dev = next(run.vae.parameters()).device
        step = "evaluate" if dev.type == "cpu" else f"evaluate_{dev.type}"
        key = {"checkpoint": which, "epoch": run.epoch, "particles": EVAL_PARTICLES, "chunk": EVAL_CHUNK}
        if doc is None or doc.get("key") != key:
            doc = {"row": row, "key": key, "measure": "log p(x) lower bound L_K (importance sampled)",
                   "ll": [], "elbo": [], "seconds": 0.0}  # fmt: skip
        x, y = run.data.split("test")
        while len(doc["ll"]) < len(x):
            if deadline is not None and time.monotonic() >= deadline:
                print(
                    f"{row}: out of time (--until) after {len(doc['ll'])} test images; evaluate ROW resumes", flush=True
                )
                return 0
            s = len(doc["ll"])
            t0, c0 = time.perf_counter(), time.process_time()
            torch.manual_seed(1_000_003 * (s // EVAL_CHUNK) + 17)  # the draws of a chunk are fixed by its position
            xs = x[s : s + EVAL_CHUNK].to(dev)
            ys = None if y is None else y[s : s + EVAL_CHUNK].to(dev)
            t = point_terms(run.vae, xs, ys, EVAL_PARTICLES, means=False)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            doc["ll"] += [round(v, 5) for v in t.log_likelihood.tolist()]
            doc["elbo"] += [round(v, 5) for v in t.elbo.tolist()]
            doc["seconds"] = round(doc["seconds"] + time.perf_counter() - t0, 1)
            doc.setdefault("devices", {}).setdefault(dev.type, 0)
            doc["devices"][dev.type] += len(xs)  # test images scored on each kind of device
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc) + "\n")
            tmp.replace(out)
            n = len(doc["ll"])
            _cpu_add(row, step, time.process_time() - c0)
            if step != "evaluate":
                _cpu_add(row, f"{step}_wall", time.perf_counter() - t0)
            print(f"{row}: L_{EVAL_PARTICLES} on {n}/{len(x)} test images, mean {sum(doc['ll']) / n:.3f} "
                  f"({doc['seconds']:.0f} s, rss {_rss_gib():.1f} GiB)", flush=True)  # fmt: skip
            if _rss_gib() > EVAL_RSS_GIB and n < len(x):  # fresh process; the chunks so far are on disk
                print(f"{row}: resident set above {EVAL_RSS_GIB} GiB; restarting the process", flush=True)
                left = [] if deadline is None else ["--until", str(max(deadline - time.monotonic(), 0.01))]
                os.execv(sys.executable, [sys.executable, __file__, "evaluate", "--checkpoint", which, "--device", device,
                                          *left, *(["--partial"] if partial else []), *rows])  # fmt: skip
    return 0


def _mean_se(v: list[float]) -> tuple[float, float]:
    n = len(v)
    m = sum(v) / n
    var = sum((a - m) ** 2 for a in v) / (n - 1) if n > 1 else math.nan
    return m, math.sqrt(var / n)


def status() -> int:
    cpu = json.loads(CPU.read_text()) if CPU.exists() else {}
    for row in ROWS:
        ev = RESULTS / f"{row}.json"
        n = len(json.loads(ev.read_text())["ll"]) if ev.exists() else 0
        c = cpu.get(row, {})
        print(
            f"{row:16s} epochs {epochs_done(row):4d}/{epochs_wanted(row)}  L_5000 images {n:5d}  "
            f"cpu train {c.get('train', 0) / 3600:.2f} h  evaluate {c.get('evaluate', 0) / 3600:.2f} h"
        )
    return 0


def _seconds(text: str) -> float:
    """``--until``'s value: a positive number of seconds."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive, finite number of seconds")
    return v


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("rows", nargs="+", choices=list(ROWS))
    t.add_argument("--time-key", default=None,
                   help="the cpu_seconds.json entry this training's CPU time goes to (default: train, or train_gpu "
                   "where a GPU trains it)")  # fmt: skip
    t.add_argument("--tries", type=int, default=20, help="restarts of a run that did not finish (default 20)")
    t.add_argument("--epochs", type=int, default=None,
                   help="train to this many epochs instead of the spec's (resume extends a finished run; "
                   "1093 ends stage 6 of the schedule, 3280 stage 7)")  # fmt: skip
    e = sub.add_parser("evaluate")
    e.add_argument("rows", nargs="+", choices=list(ROWS))
    e.add_argument("--checkpoint", choices=("last", "best"), default="last")
    e.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="cpu",
        help="where to score (default cpu; auto: a GPU when there is one)",
    )
    e.add_argument("--partial", action="store_true", help="also score a row that has not trained all its epochs")  # fmt: skip
    for q in (t, e):
        q.add_argument("--until", type=_seconds, default=None, metavar="SECONDS",
                       help="stop after this much wall-clock time; the next call continues")  # fmt: skip
    sub.add_parser("report")
    sub.add_parser("status")
    a = p.parse_args(argv)
    if a.cmd == "train":
        return train(a.rows, a.tries, a.epochs, a.until, a.time_key)
    if a.cmd == "evaluate":
        return evaluate(a.rows, a.checkpoint, a.device, a.until, a.partial)
    if a.cmd == "status":
        return status()
    from report import report  # experiments/convergence/report.py

    return report()


if __name__ == "__main__":
    sys.exit(main())
