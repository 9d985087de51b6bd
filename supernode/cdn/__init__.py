"""The CDN: the piece cache on disk, the origin client that fills it, and the port that serves it."""
