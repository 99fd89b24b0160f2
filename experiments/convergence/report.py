"""Tables and learning curves of the convergence experiment (run with ``run.py report``).

Reads ``runs/ROW/metrics.jsonl`` (per-epoch curve), ``results/ROW.json`` (per-image L_5000) and
``cpu_seconds.json``; writes ``results/tables.md``, ``results/summary.json`` and ``figures/curves.png``.
Rows still training or still being evaluated are reported as such, with the epochs they have.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from run import EXTENDS, epochs_done, epochs_wanted  # experiments/convergence/run.py

HERE = Path(__file__).resolve().parent
RUNS, RESULTS, FIGURES, CPU = HERE / "runs", HERE / "results", HERE / "figures", HERE / "cpu_seconds.json"
SEGMENTS = HERE / "segments.jsonl"
#: where epochs not covered by segments.jsonl ran (the rows started before it existed)
DEFAULT_MACHINE = "CPU"

#: Burda et al. (2015), Table 1, MNIST, one stochastic layer: -log p(x) by L_5000 after 3,280 epochs.
PAPER = {"vae_k1": 86.76, "vae_k5": 86.47, "vae_k50": 86.35, "iwae_k5": 85.54, "iwae_k50": 84.78}
PAPER.update({"vae_k1_seed1": PAPER["vae_k1"], "vae_k1_stage6": PAPER["vae_k1"], "iwae_k5_stage6": PAPER["iwae_k5"]})
TABLE = [  # row, estimator, K
    ("vae_k1", "VAE (trace)", 1), ("vae_k5", "VAE (trace)", 5), ("iwae_k5", "IWAE", 5), ("dreg_k5", "IWAE-DReG", 5),
    ("stl_k1", "VAE-STL", 1), ("meanfield_k1", "VAE, analytic KL", 1), ("iwae_k50", "IWAE", 50),
    ("vae_k50", "VAE (trace)", 50),
    ("vae_k1_seed1", "VAE (trace), vae_k1 with training seed 1", 1),
    ("vae_k1_stage6", "VAE (trace), vae_k1 continued through stage 6", 1),
    ("iwae_k5_stage6", "IWAE, iwae_k5 continued through stage 6", 5),
]  # fmt: skip
ZOO = [
    ("zoo_standard", "N(0, I)", "diagonal"), ("zoo_learned", "learned normal", "diagonal"),
    ("zoo_mixture", "mixture (100)", "diagonal"), ("zoo_vamp", "VampPrior (100)", "diagonal"),
    ("zoo_flow_prior", "flow (2 MAF)", "diagonal"), ("zoo_full_rank", "N(0, I)", "full rank"),
    ("zoo_low_rank", "N(0, I)", "low rank (r = 2)"), ("zoo_flow_guide", "N(0, I)", "flow (IAF)"),
]  # fmt: skip
STAGE_ENDS = [1, 4, 13, 40, 121, 364, 1093, 3280]  # last epoch of each stage of Burda et al.'s schedule
REFERENCE = "vae_k1"  # paired differences are taken against this row
#: the questions the table answers, as paired per-image differences (first minus second, in L_5000 nats)
PAIRS = [("iwae_k5", "vae_k1"), ("iwae_k5", "vae_k5"), ("dreg_k5", "iwae_k5"), ("dreg_k5", "vae_k1"), ("vae_k5", "vae_k1"),
         ("stl_k1", "vae_k1"), ("meanfield_k1", "vae_k1"), ("iwae_k50", "iwae_k5"),
         ("vae_k1_seed1", "vae_k1"), ("vae_k1_stage6", "vae_k1"), ("iwae_k5_stage6", "iwae_k5"), ("iwae_k5_stage6", "vae_k1_stage6"),
         *[(r, "zoo_standard") for r, _, _ in ZOO[1:]]]  # fmt: skip


def _metrics(row: str) -> list[dict[str, Any]]:
    p = RUNS / row / "metrics.jsonl"
    return [json.loads(s) for s in p.read_text().splitlines() if s.strip()] if p.exists() else []


def _where(row: str, epochs: int) -> str:
    """Which machines trained which epochs, from ``segments.jsonl``; epochs it does not cover ran on this
    project's 2-core CPU machine (``DEFAULT_MACHINE``)."""
    segs = [json.loads(s) for s in SEGMENTS.read_text().splitlines() if s.strip()] if SEGMENTS.exists() else []
    spans: dict[str, list[tuple[int, int]]] = {}
    for rec in segs:
        a, b = rec["epochs"]
        if rec["row"] != row or b <= a:
            continue
        label = "GPU" if rec["machine"].startswith("GPU") else ("GPU machine's CPU" if "H200" in rec["machine"] else "")
        if label:
            spans.setdefault(label, []).append((a, b))
    if not spans:
        return DEFAULT_MACHINE if epochs else ""
    parts = [f"{label} {', '.join(f'{a + 1}-{b}' for a, b in sorted(v))}" for label, v in spans.items()]
    covered = sum(b - a for v in spans.values() for a, b in v)
    return "; ".join(parts) + (f"; {DEFAULT_MACHINE} the rest" if covered < epochs else "")


def _mean_se(v: list[float]) -> tuple[float, float]:
    n = len(v)
    m = sum(v) / n
    return m, (math.sqrt(sum((a - m) ** 2 for a in v) / (n - 1) / n) if n > 1 else math.nan)


def _time(r: dict[str, Any]) -> str:
    return f"{r['wall_hours_train']:.2f} / {r['cpu_hours_train']:.2f} + {r['cpu_hours_eval']:.2f}"


def _row(row: str, cpu: dict[str, Any], ref: list[float] | None, reference: str = REFERENCE) -> dict[str, Any]:
    ms = _metrics(row)
    out: dict[str, Any] = {"row": row, "epochs": ms[-1]["epoch"] if ms else 0, "of": epochs_wanted(row)}
    if ms:
        out["test_elbo_1"] = ms[-1].get("test_elbo")
        curve = [(r["epoch"], r["curve_ll"]) for r in ms if "curve_ll" in r]
        if curve:
            out["curve_last"] = curve[-1]
    c = cpu.get(row, {})
    out["cpu_hours_train"] = sum(c.get(k, 0.0) for k in ("train", "train_gpu", "train_gpu_host")) / 3600
    out["cpu_hours_eval"] = c.get("evaluate", 0.0) / 3600
    out["wall_hours_train"] = sum(r.get("seconds", 0.0) for r in ms) / 3600  # sum of the epochs' wall-clock times
    out["where"] = _where(row, out["epochs"])
    ev = RESULTS / f"{row}.json"
    if ev.exists():
        doc = json.loads(ev.read_text())
        ll = doc["ll"]
        out["eval_images"] = len(ll)
        out["eval_epoch"] = doc["key"]["epoch"]
        if len(ll) == 10000:
            out["nll"], out["nll_se"] = (-m for m in _mean_se(ll))
            out["nll_se"] = abs(out["nll_se"])
            if ref is not None and row != reference:
                out["gain_vs_ref"], out["gain_vs_ref_se"] = _mean_se([a - b for a, b in zip(ll, ref, strict=True)])
    return out


def _lls(row: str) -> list[float] | None:
    """The per-image L_5000 of a row, when all 10,000 test images are scored."""
    p = RESULTS / f"{row}.json"
    ll = json.loads(p.read_text())["ll"] if p.exists() else None
    return ll if ll is not None and len(ll) == 10000 else None


def _fmt(v: float | None, nd: int = 2) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _status(r: dict[str, Any]) -> str:
    if "nll" in r:
        return f"{r['epochs']} of {r['of']}" + ("" if r["epochs"] >= r["of"] else " (stopped; scored there)")
    if not r["epochs"]:
        return "not started"
    state = f"{r['epochs']} of {r['of']}" + (" (training)" if r["epochs"] < r["of"] else "")
    if r.get("eval_images"):
        state += f", L_5000 on {r['eval_images']} of 10,000 images"
    return state


def report() -> int:
    cpu = json.loads(CPU.read_text()) if CPU.exists() else {}
    ref_doc = RESULTS / f"{REFERENCE}.json"
    ref = json.loads(ref_doc.read_text())["ll"] if ref_doc.exists() else None
    ref = ref if ref is not None and len(ref) == 10000 else None
    rows = {r: _row(r, cpu, ref) for r, _, _ in TABLE}
    zoo_ref = _lls("zoo_standard")
    zoo = {r: _row(r, cpu, zoo_ref, "zoo_standard") for r, _, _ in ZOO}
    lines = [
        (
            "| row | estimator | K | epochs | -L_5000 (nats) ± SE | Burda et al. (3,280 epochs) | ours - paper | "
            "L_5000 gain over VAE k=1 (paired) | -ELBO (1 draw) | L_100 curve (1,000 images) | trained on | "
            "train h (sum of epoch times) / CPU h recorded (train + eval) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, name, k in TABLE:
        r = rows[row]
        paper = PAPER.get(row)
        gap = _fmt(r["nll"] - paper) if "nll" in r and paper else ""
        gain = f"{r['gain_vs_ref']:.2f} ± {r['gain_vs_ref_se']:.2f}" if "gain_vs_ref" in r else ""
        nll = f"{r['nll']:.2f} ± {r['nll_se']:.2f}" if "nll" in r else ""
        curve = f"{-r['curve_last'][1]:.2f} (epoch {r['curve_last'][0]})" if "curve_last" in r else ""
        elbo = _fmt(-r["test_elbo_1"]) if r.get("test_elbo_1") is not None else ""
        cpu_h = _time(r)
        lines.append(f"| {row} | {name} | {k} | {_status(r)} | {nll} | {_fmt(paper)} | {gap} | {gain} | {elbo} | "
                     f"{curve} | {r['where']} | {cpu_h} |")  # fmt: skip
    lines += [
        "",
        (
            "| row | prior | guide | epochs | -L_5000 (nats) ± SE | L_5000 gain over N(0, I) + diagonal (paired) | "
            "-ELBO (1 draw) | L_100 curve (1,000 images) | trained on | train h (sum of epoch times) / CPU h recorded "
            "(train + eval) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, prior, guide in ZOO:
        r = zoo[row]
        nll = f"{r['nll']:.2f} ± {r['nll_se']:.2f}" if "nll" in r else ""
        curve = f"{-r['curve_last'][1]:.2f} (epoch {r['curve_last'][0]})" if "curve_last" in r else ""
        elbo = _fmt(-r["test_elbo_1"]) if r.get("test_elbo_1") is not None else ""
        gain = f"{r['gain_vs_ref']:.2f} ± {r['gain_vs_ref_se']:.2f}" if "gain_vs_ref" in r else ""
        lines.append(f"| {row} | {prior} | {guide} | {_status(r)} | {nll} | {gain} | {elbo} | {curve} | "
                     f"{r['where']} | {_time(r)} |")  # fmt: skip
    lines += ["", *_stage_table([r for r, _, _ in TABLE] + [r for r, _, _ in ZOO])]
    lines += ["", "| paired difference (per test image) | L_5000 gain (nats) ± SE | images |", "|---|---|---|"]
    pairs = {}
    for a, b in PAIRS:
        la, lb = _lls(a), _lls(b)
        if la is None or lb is None:
            continue
        m, se = _mean_se([x - y for x, y in zip(la, lb, strict=True)])
        pairs[f"{a} - {b}"] = {"mean": m, "se": se, "z": m / se if se > 0 else math.nan}
        lines.append(f"| {a} - {b} | {m:+.3f} ± {se:.3f} (z = {m / se:+.1f}) | {len(la)} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tables.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "summary.json").write_text(json.dumps({"table": rows, "zoo": zoo, "pairs": pairs}, indent=1) + "\n")
    _figure([*TABLE], "curves.png", "IWAE table rows (tanh MLP)", paper=True)
    _figure([*ZOO], "curves_zoo.png", "component zoo (ReLU MLP, KL warm-up over 100 epochs)", paper=False)
    print("\n".join(lines))
    return 0


def _stage_table(rows: list[str]) -> list[str]:
    """-L_100 on the curve subset at the end of each learning-rate stage from 40 epochs on, and the gain in
    the last stage a row has finished (nats per stage): how far from a plateau each row stopped."""
    last = max((epochs_done(row) for row in rows), default=0)
    ends = [e for e in STAGE_ENDS if 40 <= e <= max(364, last)]
    out = [
        "| row | " + " | ".join(f"-L_100 at epoch {e}" for e in ends) + " | gain in the last finished stage |",
        "|---|" + "---|" * (len(ends) + 1),
    ]
    for row in rows:
        curve = {r["epoch"]: -r["curve_ll"] for r in _metrics(row) if "curve_ll" in r}
        if not curve:
            continue
        at = [curve.get(max((e2 for e2 in curve if e2 <= e), default=-1)) if max(curve) >= e else None for e in ends]
        done = [(e, v) for e, v in zip(ends, at, strict=True) if v is not None]
        gain = f"{done[-2][1] - done[-1][1]:.2f} (epochs {done[-2][0] + 1}-{done[-1][0]})" if len(done) > 1 else ""
        out.append(f"| {row} | " + " | ".join(_fmt(v) for v in at) + f" | {gain} |")
    return out


def _figure(rows: list[tuple[str, str, Any]], name: str, title: str, paper: bool) -> None:
    """Left: the whole L_100 curve (log epochs); right: the last two stages (linear epochs), where the
    question is whether a row has reached a plateau."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {row: [(r["epoch"], -r["curve_ll"]) for r in _metrics(row) if "curve_ll" in r] for row, _, _ in rows}
    for row, (src, _) in EXTENDS.items():  # a continued row shares its source's curve up to the source's end
        if row in curves and src in curves and curves[src]:
            curves[row] = [(e, v) for e, v in curves[row] if e >= curves[src][-1][0]]
    curves = {row: pts for row, pts in curves.items() if pts}
    if not curves:
        return
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.1, 1]})
    lo = min(v for pts in curves.values() for _, v in pts)
    last = max(pts[-1][0] for pts in curves.values())
    start = 121 if last > 364 else 40  # the first epoch of the last two stages shown
    late = [v for pts in curves.values() for e, v in pts if e > start]
    drawn: set[float] = set()  # reference values already drawn
    for row, label, extra in rows:
        if row not in curves:
            continue
        x, y = zip(*curves[row], strict=True)
        what = f"{label}, K={extra}" if isinstance(extra, int) else f"{label} prior, {extra} guide"
        line = ax.plot(x, y, marker=".", ms=3, lw=1.2, label=f"{row}: {what} (curve to epoch {x[-1]})")[0]
        zoom.plot(x, y, marker=".", ms=3, lw=1.2, color=line.get_color())
        if paper and row in PAPER and PAPER[row] not in drawn:  # a continued or reseeded row shares its source's
            drawn.add(PAPER[row])
            for a in (ax, zoom):
                a.axhline(PAPER[row], color=line.get_color(), ls="--", lw=0.8)
    shown = [e for e in STAGE_ENDS if e <= max(364, last)]
    for a in (ax, zoom):
        for e in shown:
            a.axvline(e, color="0.55", ls=":", lw=0.8, zorder=0)
        a.grid(alpha=0.3)
    ax.set_xscale("log")
    ax.set_xlabel("epoch (log scale; grey lines: ends of the learning-rate stages)")
    ax.set_ylabel("-L_100 on the first 1,000 test images (nats)")
    floor = min(lo, min(PAPER.values())) if paper else lo
    ax.set_ylim(floor - 1, lo + 25)
    i = STAGE_ENDS.index(start)
    zoom.set_xlim(start, STAGE_ENDS[i + 2] + 6)
    zoom.set_ylim(floor - 0.5, (max(late) if late else lo + 10) + 0.5)
    zoom.set_xlabel(f"epoch (stages {i + 1} and {i + 2}: learning rate 1e-3 x 10^(-{i + 1}/7), then x 10^(-{i + 2}/7))")
    zoom.set_title("the last two stages", fontsize=9)
    subtitle = (
        "dashed: Burda et al.'s final -L_5000 (all test images, 3,280 epochs), in the colour of the first row "
        "with that setting"
        if paper
        else ""
    )
    ax.set_title(f"Learning curves: {title}\n{subtitle}", fontsize=9)
    ax.legend(fontsize=7)
    FIGURES.mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(FIGURES / name, dpi=110)
    plt.close(fig)
