"""``python -m logitcache`` is the ``logitcache`` command."""

from logitcache.apps.cli import main

raise SystemExit(main())
