"""What the commands do beyond a run of steps (``bench``, ``publish``, plots), callable
from Python with the command line's defaults.
"""
