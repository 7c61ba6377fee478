"""Runnable entry points: flags in (generated from the configs by `flags.py`), `quicknets_jax.runs` out."""
