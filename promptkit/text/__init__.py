"""Text over tokens, below the operations: chat templates, exact-length texts, the request
model a prefix cache sees, the cache simulation and AIPerf's cache-bust marker.
"""
