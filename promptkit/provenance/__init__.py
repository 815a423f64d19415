"""How a file was made: its manifest, what a run records in it, and re-making the file
from it (``rebuild``) or checking the file against it (``verify``).
"""
