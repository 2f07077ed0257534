"""Making gates: training (sensitivity or the paper's local loss), measurement and calibration."""
