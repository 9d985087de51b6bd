"""``python -m dfget``: the same entry point as the ``dfget`` console script."""

from .cli import main

raise SystemExit(main())
