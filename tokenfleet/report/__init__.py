"""Reports: the figures of finished replay and frontier runs as PNGs and one static page
(`build.write_report`). Reads the runs' files only; never replays."""
