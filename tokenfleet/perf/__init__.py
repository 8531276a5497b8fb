"""The performance model: seconds of one serving step, how a GPU's memory is shared, and the
batch-size sweep of one replica built on both.

Both replay (pricing each simulated step) and calibration (fitting engine overheads to step
logs) stand on it; it stands on the architecture catalog (`models`) and the hardware profiles
(`hardware`) only.
"""
