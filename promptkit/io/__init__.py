"""Sources and sinks: JSON lines (read and written exactly), compression, CSV, Hugging
Face datasets, shards, column mappings, and the one discipline for writing files.
"""
