"""Adapters to the training stacks users already run (each behind its own optional extra)."""
