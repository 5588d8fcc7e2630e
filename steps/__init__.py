"""ZenML steps: thin, typed, one per file, with named outputs.

The work is done by ``ml/`` and ``registry/``.
"""
