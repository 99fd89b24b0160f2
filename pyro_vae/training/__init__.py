"""Training: the SVI loop over an explicit training state, its step, schedules, guards and signals."""
