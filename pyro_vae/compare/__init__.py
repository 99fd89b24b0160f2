"""Compare ELBO estimators on equal footing: ``pyro-vae compare SPEC --estimators a,b,c``.

Every (estimator, seed) pair is one independent job: the same spec with only ``elbo`` (and ``seed``)
changed, so jobs with the same seed start from the same initialization (the model is built right
after seeding, before the estimator) and see the same data order (the batch order generator is
seeded from ``seed``), with the same budget (``train.epochs``, optionally a wall-clock limit). Every
trained model is then evaluated with the same IWAE bound L_K on the test split.

The work is split so that it can be spread over processes (any pool of processes, or several machines):

- :mod:`.jobs`: :class:`CompareOptions`, :class:`Job` and :func:`plan`, which lists the jobs;
- :mod:`.run`: :func:`run_job` runs one and returns a JSON-able record; :func:`compare` does all of it
  in one process (``workers`` > 1: a pool of processes, :mod:`.parallel`), resumable;
- :mod:`.stats`: :func:`aggregate`, means over seeds, standard errors, paired differences (pure);
- :mod:`.report` and :mod:`.plots`: :func:`write_report`, ``compare.json``, ``compare.md``, figures;
- :mod:`.cli`: the ``compare`` and ``gradients`` commands (:func:`add_cli`).

Outputs in ``OUT``: ``runs/<estimator>-seed<N>/`` (ordinary run directories), ``jobs/*.json`` (each
finished job's record), ``compare.json``, ``compare.md`` and ``figures/{curves,gradient_snr}.png``.
"""

from .cli import add_cli
from .jobs import CompareOptions, Job, plan, snr_estimators
from .report import markdown, report_settings, write_report
from .run import CompareResult, compare, evaluate_model, measure_gradients, run_job
from .stats import aggregate

__all__ = [
    "CompareOptions",
    "CompareResult",
    "Job",
    "add_cli",
    "aggregate",
    "compare",
    "evaluate_model",
    "markdown",
    "measure_gradients",
    "plan",
    "report_settings",
    "run_job",
    "snr_estimators",
    "write_report",
]
