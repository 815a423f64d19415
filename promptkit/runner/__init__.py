"""Running steps over a source into a sink: the run itself (:mod:`promptkit.runner.pipeline`,
which asks the source what it yields: :mod:`promptkit.io.interface`), worker processes
over a file's chunks (:mod:`~promptkit.runner.workers`), Arrow batches of a dataset
(:mod:`~promptkit.runner.batches`), the one ordered scheduler they and ``--ray`` share
(:mod:`~promptkit.runner.schedule`), and the writers held to the encoder's bytes
(:mod:`~promptkit.runner.writers`).
"""
