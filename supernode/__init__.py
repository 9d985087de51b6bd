"""A Dragonfly v1 SuperNode in Python: the P2P tracker, piece scheduler and CDN.

The package is organised as the data flows: ``api`` (aiohttp handlers) -> ``managers`` (task, peer,
CDN orchestration) -> pure state (``ids``, ``pieces``, ``progress``, ``scheduler``) and the on-disk
store (``cdn``). Only ``cli.main`` and ``app.build`` are meant to be used from outside.
"""

__version__ = "0.1.0"
