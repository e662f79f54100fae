"""Inference: loading checkpoints without a Trainer, evaluation, prediction, export."""
