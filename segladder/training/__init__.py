"""Training: config → Trainer, run directory, callbacks, optimisers and schedules."""
