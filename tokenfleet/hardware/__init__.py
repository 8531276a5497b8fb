"""Catalog data about hardware: GPU profiles (datasheet peaks and fitted efficiencies) and
serving-engine presets (per-step overheads), built in or read from a TOML file."""
