"""Coverage-guided fuzzing of the record decoder (atheris / libFuzzer).

Any input must decode or raise a ``RecordError``; anything else (another exception, a crash, a hang)
is a finding. The corpus is seeded with valid records, so mutations reach deep into the body.
Run: ``python tests/fuzz/fuzz_records.py -max_total_time=60`` (``tests/fuzz/test_fuzz.py`` runs it in CI).
"""

from __future__ import annotations

import sys

import atheris
import numpy  # noqa: F401  (imported before instrumentation: only logitcache's code is instrumented)
import torch  # noqa: F401
import xxhash  # noqa: F401
import zstandard  # noqa: F401

with atheris.instrument_imports(include=["logitcache"]):
    from logitcache.core import records


def one_input(data: bytes) -> None:
    try:
        record = records.decode(data)
    except records.RecordError:
        return
    assert record.offsets[-1] == record.token_ids.shape[0]  # a decoded record is consistent


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
