"""Layer 4: whole runs in a working directory — configs, the QuickNet vs end-to-end comparison, the
commitment study, the QuickNet+ ablation, metrics logs, aggregation over seeds and the report.

Imports every layer below. `experiment.train_and_evaluate(config, workdir)` is what
`python -m experiments.<dataset>` runs.
"""
