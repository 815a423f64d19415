"""The operations, one module (or package) each, over canonical records. An operation
imports only :mod:`promptkit.ops.base` and :mod:`promptkit.ops.padding` of this package;
:mod:`promptkit.ops.registry` is above them all.
"""
