"""The commands: ``logitcache`` (:mod:`.cli`), its ``demo`` (:mod:`.demo`) and ``teacher`` (:mod:`.teacher`)."""
