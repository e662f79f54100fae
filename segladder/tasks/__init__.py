"""Tasks: LightningModules joining a model, a loss, metrics and an optimiser."""
