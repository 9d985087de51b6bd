"""Managers: the stateful heart of the supernode, between the API handlers and the stores."""
