"""Sweeps: W&B-format specs run as Optuna ask-and-tell studies over the job queue, with pruning and resume."""
