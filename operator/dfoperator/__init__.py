"""The Dragonfly Preheat operator: ``Preheat`` custom resources become preheats on every supernode.

The package is called ``dfoperator`` and lives in the repository folder ``operator/``, which is a
plain folder and never a package: a top-level package named ``operator`` would shadow the standard
library module that kopf, pydantic and asyncio import.

Layers, from the edges inward:
- :mod:`.supernode` (the supernodes' ``/preheats`` API) and :mod:`.kube` (Secrets, EndpointSlices and
  the status subresource through the kubernetes client) are the only modules doing I/O;
- :mod:`.resource` (what a Preheat's spec means) and :mod:`.state` (its status and how it moves) are
  pure and hold every rule about phases, conditions and retries;
- :mod:`.reconciler` connects the two under a per-object lock; :mod:`.handlers` registers it with kopf;
- :mod:`.cli` is the ``dragonfly-operator`` entry point (``kopf run --standalone`` on :mod:`.main`).
"""

__version__ = "0.1.0"
