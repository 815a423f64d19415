"""Running steps over a source into a sink: the run itself (:mod:`promptkit.runner.pipeline`),
worker processes over a file's chunks, Arrow batches of a dataset, and the splice writer.
"""
