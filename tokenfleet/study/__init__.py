"""Studies built from many replays or finished runs: the frontier grid, run comparisons."""
