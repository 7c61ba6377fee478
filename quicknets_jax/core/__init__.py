"""Pure maths and small utilities every layer uses: the exit rule, costs, curves, calibration, settings."""
