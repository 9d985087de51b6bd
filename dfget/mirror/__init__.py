"""``dfget proxy``: the node's registry mirror for containerd (Dragonfly v1's dfdaemon role).

containerd reads ``certs.d/<registry>/hosts.toml`` and sends every pull of that registry here
first. Manifests and tags go straight to the registry (small, and they must stay fresh); blobs go
through the P2P swarm as dfget tasks whose ID is the plain blob URL's (the one an image preheat
fills the CDN with), streamed to containerd as pieces arrive, checked against their digest, and kept
on the node for the next pull. Whenever the swarm cannot deliver, the mirror fetches from the
registry itself, so a pull never fails because of it.

Modules: :mod:`.config` (options), :mod:`.oci` (names, digests, error bodies), :mod:`.upstream`
(registry requests and auth), :mod:`.blobs` (one blob in flight and its readers), :mod:`.store`
(the node's blob cache), :mod:`.metrics`, :mod:`.server` (the HTTP handlers), :mod:`.cli`.
"""
