"""Request traces: schema, validation, streaming reader/writer, converters, synth, inspect."""
