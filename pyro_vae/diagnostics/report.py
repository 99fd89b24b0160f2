"""What a diagnosis found (:class:`Diagnosis`): the arrays, the JSON report and the verdict in words."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from . import _arviz
from .options import DiagnoseOptions
from .psis import khat_shares


@dataclass
class Diagnosis:
    """Everything :func:`run_diagnostics` computed (arrays kept for files and figures)."""

    options: DiagnoseOptions
    index: np.ndarray  # positions of the scored points in the split
    psis: dict[str, np.ndarray]
    log_ratios: np.ndarray  # (N, S)
    guide_draws: np.ndarray  # (S, M, D) guide draws of the NUTS points (the ones behind log_ratios)
    nuts_points: list[dict[str, Any]]
    nuts_draws: np.ndarray | None  # (M, C, T, D)
    gap: dict[str, Any] | None
    gap_index: np.ndarray
    calibration: dict[str, Any] | None
    pit: np.ndarray | None
    seconds: dict[str, float]
    notes: list[str]
    measure: str = "log_likelihood"  # evaluate.Measure.kind: what "ELBO", "L_S" and "log p(x)" are here

    def report(self) -> dict[str, Any]:
        k = self.psis["khat"]
        ranked = np.where(np.isnan(k), np.inf, k)  # NaN (failed fit) ranks as worst; -inf (constant ratios) as best
        order = np.argsort(np.where(np.isnan(k), np.inf, k))[::-1]
        worst = [
            {
                "index": int(self.index[i]),
                "khat": float(k[i]),
                "elbo": float(self.psis["elbo"][i]),
                "iwae": float(self.psis["iwae"][i]),
            }
            for i in order[:10]
        ]
        cal = (
            None
            if self.calibration is None
            else {k2: v for k2, v in self.calibration.items() if not k2.startswith("_")}
        )
        return {
            "arviz_version": _arviz.ARVIZ_VERSION,
            "options": asdict(self.options),
            "psis": {
                "points": len(k),
                "samples": self.log_ratios.shape[1],
                **khat_shares(k),
                "khat_quantiles": {
                    str(p): float(np.quantile(ranked, p, method="nearest")) for p in (0.05, 0.25, 0.5, 0.75, 0.95)
                },
                "khat_max": float(np.max(np.where(np.isnan(k), np.inf, k))),
                "mean_elbo": float(self.psis["elbo"].mean()),
                "mean_iwae": float(self.psis["iwae"].mean()),
                "mean_gap": float(self.psis["gap"].mean()),
                "worst": worst,
                "per_point": {"index": self.index, **self.psis},
            },
            "nuts": self.nuts_points,
            "amortization_gap": None if self.gap is None else {"index": self.gap_index, **self.gap},
            "calibration": cal,
            "seconds": self.seconds,
            "notes": self.notes,
            "measure": self.measure,
            "verdict": self.verdict(),
        }

    def verdict(self) -> str:
        k = np.where(np.isnan(self.psis["khat"]), np.inf, self.psis["khat"])
        sh = khat_shares(k)
        order = np.argsort(k)[::-1][:3]
        worst = ", ".join(f"#{int(self.index[i])} (k-hat {k[i]:.2f})" for i in order)
        lines = [
            (
                f"q(z|x) is reliable for {100 * (1 - sh['share_above_0.7']):.1f}% of {len(k)} {self.options.split} "
                f"points (k-hat < 0.7; {100 * sh['share_below_0.5']:.1f}% < 0.5); worst: {worst}."
            )
        ]
        if self.nuts_points:
            ok = [p for p in self.nuts_points if p["gate_passed"]]
            line = f"NUTS reference on {len(self.nuts_points)} points: gate passed for {len(ok)}"
            if ok:
                md = max(p["comparison"]["max_abs_mean_diff_sd"] for p in ok)
                lo = min(p["comparison"]["min_sd_ratio"] for p in ok)
                hi = max(p["comparison"]["max_sd_ratio"] for p in ok)
                w = max(p["comparison"]["max_wasserstein_sd"] for p in ok)
                line += (
                    f"; guide mean off by up to {md:.2f} NUTS sd, guide sd / NUTS sd in [{lo:.2f}, {hi:.2f}], "
                    f"max W1 {w:.2f} NUTS sd"
                )
            failed = [p for p in self.nuts_points if not p["gate_passed"]]
            if failed:
                line += "; gate FAILED for " + ", ".join(
                    f"#{p['index']} ({'; '.join(p['gate_failures'])})" for p in failed
                )
            lines.append(line + ".")
        if self.gap is not None:
            g = self.gap
            lines.append(
                f"Gaps over {g['points']} points (nats): inference {g['mean_inference_gap']:.2f} = approximation "
                f"{g['mean_approximation_gap']:.2f} + amortization {g['mean_amortization_gap']:.2f} "
                f"(local guide: {g['local_family']}{'' if g['local_family_note'] == 'same family' else '; ' + g['local_family_note']})."
            )
        if self.calibration is not None:
            c = self.calibration
            d = len(c["ks_pvalue"])
            lines.append(
                f"Calibration (SBC, {c['simulations']} simulations, {d} dims): "
                f"{'uniform' if c['uniform'] else 'NOT uniform'} (min KS p {c['min_ks_pvalue']:.2g}, "
                f"{c['dims_outside_band']}/{d} dims leave the {100 * c['band_prob']:.0f}% ECDF band); "
                f"z* outside q's central 95% interval in {100 * c['mean_outside_central95']:.1f}% (expect 5%); "
                f"VSBC {'symmetric' if c['symmetric'] else 'ASYMMETRIC (directional bias)'} "
                f"(min p {c['min_vsbc_pvalue']:.2g})."
            )
        return "\n".join(lines)


__all__ = ["Diagnosis"]
