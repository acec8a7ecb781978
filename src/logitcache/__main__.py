"""``python -m logitcache`` is the ``logitcache`` command."""

from logitcache.cli import main

raise SystemExit(main())
