"""What the supernode and dfget must agree on byte for byte, in one package both import.

A dfget v1 client and the supernode compute the same task IDs, cut a file into the same pieces, frame and
hash them the same way, read the same Go-style size spellings in their configs and talk to registries with
the same auth rules. Keeping that code here, free of I/O and of either side's internals, means a client can
be installed without the server and the two can never drift apart.
"""
