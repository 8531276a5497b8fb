"""The performance model: seconds of one serving step, and how a GPU's memory is shared.

Both replay (pricing each simulated step) and calibration (fitting engine overheads to step
logs) stand on it; it stands on the architecture catalog (`models`) and the hardware profiles
(`hardware`) only.
"""
