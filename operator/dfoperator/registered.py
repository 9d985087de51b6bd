"""The module ``kopf run`` loads: importing it registers the operator into kopf's default registry.

Settings come from the environment (``DFOPERATOR_*``, which the flags of ``dragonfly-operator`` set)
when kopf imports this module. Nothing else imports it, so tests, which build their own
:class:`~dfoperator.handlers.PreheatOperator`, never touch kopf's default registry.
"""

from __future__ import annotations

import kopf

from .config import OperatorConfig
from .handlers import PreheatOperator

operator = PreheatOperator(OperatorConfig(), registry=kopf.get_default_registry())
