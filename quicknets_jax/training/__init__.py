"""The one trainer: the train step, its drivers and schedule, losses, data parallelism, checkpoints."""
