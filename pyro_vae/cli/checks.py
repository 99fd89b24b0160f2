"""Every argument a command was given, checked in one place before any work starts."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from ..errors import SpecError, brief
from ..rundir import lock as runlock

#: Integer options and their valid ranges (inclusive; None: unbounded), checked for every command that has them.
_INT_RANGES: dict[str, tuple[int, int | None]] = {
    "particles": (1, None), "num": (1, None), "points": (1, None), "samples": (1, None), "chains": (1, None),
    "draws": (1, None), "nuts": (0, None), "warmup": (0, None), "gap_points": (0, None), "sbc": (0, None),
    "seed": (0, 2**32 - 1), "label": (0, None), "workers": (1, None), "eval_points": (0, None),
    "train_particles": (0, None), "curve_particles": (0, None), "curve_points": (1, None),
    "snr_draws": (2, None), "snr_points": (1, None),
}  # fmt: skip
#: Most samples drawn into one PNG grid (10 a row): matplotlib draws at most 2**16 pixels a side.
MAX_SAMPLE_GRID = 5000
#: Image formats ``sample --out`` can write (matplotlib's raster and vector formats).
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".tif", ".tiff", ".webp", ".eps", ".ps", ".gif")


def check_args(a: argparse.Namespace) -> None:
    """Every argument a command was given, checked in one place before any work starts: integer
    ranges, output paths (a file, a device, a missing or unwritable parent, a name too long) and
    output formats. Raises :class:`~pyro_vae.errors.SpecError` (exit 2, one line)."""
    for name, (lo, hi) in _INT_RANGES.items():
        v = getattr(a, name, None)
        if isinstance(v, int) and not (lo <= v and (hi is None or v <= hi)):
            flag = "--" + name.replace("_", "-")
            raise SpecError(f"{flag} {v}: must be >= {lo}" if hi is None else f"{flag} {v}: must be in [{lo}, {hi}]")
    budget = getattr(a, "budget_seconds", None)
    if budget is not None and not (math.isfinite(budget) and budget >= 0):
        raise SpecError(f"--budget-seconds {budget}: must be a finite number >= 0")
    hours = getattr(a, "max_hours", None)
    if hours is not None and not (math.isfinite(hours) and hours >= 0):
        raise SpecError(f"--max-hours {hours}: must be a finite number >= 0 (0: no limit)")
    out = getattr(a, "out", None)
    if a.command == "sample":
        if a.num > MAX_SAMPLE_GRID:
            raise SpecError(
                f"--num {a.num}: at most {MAX_SAMPLE_GRID:,} samples fit in one image grid (matplotlib draws at "
                "most 65,536 pixels a side); draw them in Python with vae.sample(n) for more"
            )
        if out is not None and Path(out).suffix.lower() not in _IMAGE_SUFFIXES:
            raise SpecError(
                f"--out {brief(out)}: the file name must end in an image format ({', '.join(_IMAGE_SUFFIXES)})"
            )
    if a.command in ("sample", "gradients") and out is not None:
        if len(os.fsencode(Path(out).name)) > 255:  # before any stat of it, which would fail with ENAMETOOLONG
            raise SpecError(f"--out {brief(out)}: the file name is longer than 255 bytes")
        parent = runlock.check_out_file(out).parent
        if not runlock.is_inside(parent, a.run_dir):  # the run's own folders are made and recorded by the command
            try:  # the folder the user named, made now: a place where nothing can be created fails before any work
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SpecError(f"--out {brief(out)}: cannot create {brief(str(parent))}: {e.strerror or e}") from None
    elif a.command in ("train", "compare", "diagnose") and out is not None:
        runlock.check_out_dir(out)
