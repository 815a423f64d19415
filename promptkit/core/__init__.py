"""The bottom layer: the canonical record, errors, limits, tokenizers, seeds, words,
redaction, temporary files, interrupts and progress. It imports nothing else of promptkit's.
"""
