"""The network itself: cfg parsing, the validated network description, .weights files and the engine binding.

Imports only pydarknet.errors and pydarknet.utils; everything else builds on this package.
"""
