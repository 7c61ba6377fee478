"""Runnable entry points: flags in, `quicknets_jax.experiment.train_and_evaluate` out."""
