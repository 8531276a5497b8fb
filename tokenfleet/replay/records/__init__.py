"""What a replay writes, and when: the timeline and the request records while it runs
(`timeline`, `requests`), prices and the summary after it (`requests.price_requests`,
`summary`). The names of the files in an output directory are defined here, once."""

REQUESTS_FILE = "requests.parquet"
REQUESTS_DIR = "requests"  # replay --cells: requests/cell=<c>/part-0.parquet, one per cell
RAW_REQUESTS_FILE = ".requests-raw.arrow"  # the records before costs are known; removed after
TIMELINE_FILE = "timeline.parquet"
SUMMARY_FILE = "summary.json"
SCENARIO_FILE = "scenario.toml"
ROW_GROUP_ROWS = 65_536  # rows per row group of the output files (at least; whole batches)
