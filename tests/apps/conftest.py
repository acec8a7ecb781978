"""Fixtures for the command tests: the writer tests' tiny Hugging Face teacher."""

from tests.writer.conftest import tiny_llama, tokenizer

__all__ = ["tiny_llama", "tokenizer"]
