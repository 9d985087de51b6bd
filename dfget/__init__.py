"""dfget: the Dragonfly v1 P2P download client and its uploader, in Python.

It speaks the v1 wire protocol of Go dfget 1.0.6 on both sides (``shared/spec/dfget-v1-protocol.md``),
so Python and Go peers can share one swarm, one supernode and one node uploader.
"""

__version__ = "0.1.0"
