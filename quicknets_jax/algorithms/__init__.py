"""Layer 3: the training algorithms and inference built on the one trainer.

Imports `training/`, `models/`, `data/` and `core/`. `quicknet` (Algorithm 1), `commitment` (heads on
frozen exits), `end_to_end` (the baseline), `finetune` (QuickNet+ joint fine-tuning), `sdn` (jointly
trained multi-exit networks), `cascade` (early exit for real, batch by batch), `forward` (chunked
forward passes), `events` (what a run tells its observers), `config` (their settings).
"""
