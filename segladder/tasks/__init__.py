"""Tasks: LightningModules joining a model, a loss, metrics and an optimiser; one module per kind of training.

Importing this package registers every task in `TASKS` (see `tasks/base.py` for the contract).
"""

from segladder.tasks import boxes, classification, distillation, segmentation  # noqa: F401  (importing them registers the tasks)
from segladder.tasks.base import TASKS, Task, require_task

__all__ = ["TASKS", "Task", "require_task"]
