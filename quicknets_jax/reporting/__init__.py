"""Layer 3 (beside `algorithms/`): tables and figures from results dicts; imports only `core/` and `data/`.

`tables` writes Markdown (Table 1, the commitment study, the QuickNet+ ablation), `figures` the
paper's figures as PNGs (matplotlib, no pyplot).
"""
