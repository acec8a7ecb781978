"""Imported first by every torch package of logitcache: without torch, an ``ImportError`` that says what to install."""

from logitcache.extras import require

require("torch", extra="torch", by="logitcache's torch side (samplers, sparse-KD loss, writer, loader, demo)")
