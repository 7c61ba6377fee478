"""Layer 0: pure maths and small utilities; imports nothing else of the package.

`exits` (the early-exit rule, vectorized), `costs` (every FLOP formula), `curves` (cost–accuracy curves
and their comparison), `calibration`, `stats` (mean ± std over seeds), `config` (hyperparameters
declared once as dataclass fields), `progress` (progress lines with rate and ETA).
"""
