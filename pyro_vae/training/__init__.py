"""Training: the SVI loop over an explicit training state, its step, schedules, guards and signals.

- :mod:`~pyro_vae.training.loop`: :func:`fit`, a page-long loop over epochs, and the named steps around it;
- :mod:`~pyro_vae.training.state`: :class:`TrainState` (model, optimizer, random streams, position,
  history) with its one save to and restore from a checkpoint;
- :mod:`~pyro_vae.training.step`: one optimization step, skipped when the loss or a gradient is NaN/inf;
- :mod:`~pyro_vae.training.metrics`: the per-epoch held-out numbers, the learning curve, summary.json;
- :mod:`~pyro_vae.training.schedules`: KL-weight and learning-rate schedules;
- :mod:`~pyro_vae.training.nonfinite`: the NaN/inf and divergence guards;
- :mod:`~pyro_vae.training.signals`: SIGINT/SIGTERM stop after the current step with a checkpoint;
- :mod:`~pyro_vae.training.noise`: per-step noise seeded by the step (world-size invariant draws);
- :mod:`~pyro_vae.training.distributed`: data parallelism under ``torchrun``;
- :mod:`~pyro_vae.training.progress`, :mod:`~pyro_vae.training.trackers`: progress lines, TensorBoard, MLflow.
"""

from .loop import FitResult, NonFiniteLoss, fit, make_optimizer
from .state import TrainState

__all__ = ["FitResult", "NonFiniteLoss", "TrainState", "fit", "make_optimizer"]
