"""Forescale's shared core: the long-format schema, the configuration, the scaling policy.

Everything else (``models``, ``pipelines``, ``serving``, the benchmarks) imports it; it imports
nothing of ours and no training library, so the serving process can load it.
"""
