"""Tests of the Preheat operator (``operator/dfoperator``).

``operator/`` is the import root of the ``dfoperator`` package (and never a package itself: the stdlib
``operator`` module must stay what ``import operator`` finds). Until the project's pytest ``pythonpath``
lists it, it is put on ``sys.path`` here, after the repository root so nothing there is shadowed.
"""

import sys
from pathlib import Path

_OPERATOR_ROOT = str(Path(__file__).resolve().parents[2] / "operator")
if _OPERATOR_ROOT not in sys.path:
    sys.path.append(_OPERATOR_ROOT)
