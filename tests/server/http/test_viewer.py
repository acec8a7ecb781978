"""The web viewer in a real headless browser (Debian's Chromium, driven by Playwright)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from logitcache.core import records
from logitcache.targets.sparse import SparseTargets
from logitcache.testing import ServerProcess
from tests.server.helpers import MANIFEST, TOPK_MANIFEST, make_records
from tests.server.http.test_routes import _tiny_tokenizer

CHROMIUM = os.environ.get("LOGITCACHE_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs Chromium at {CHROMIUM}")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _label_position(data: bytes) -> int:
    """A position whose next token is among its stored entries (so the chart highlights it)."""
    record = records.decode(data)
    for pos in range(record.header.num_positions - 1):
        lo, hi = record.offsets[pos], record.offsets[pos + 1]
        if record.input_ids[pos + 1] in record.token_ids[lo:hi]:
            return pos
    raise AssertionError("no position has its label among the entries")


def test_viewer_lists_opens_and_charts(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    items = make_records(30, seed=4)
    seq, data = items[1]
    # make the label of one position one of its entries, so the highlight is visible
    record = records.decode(data)
    pos = 2
    lo = record.offsets[pos]
    ids = record.input_ids.copy()
    ids[pos + 1] = record.token_ids[lo]
    items[1] = (seq, records.encode(ids, SparseTargets.from_record(record)))
    assert _label_position(items[1][1]) <= pos
    server = ServerProcess(tmp_path / "data", "--tokenizer", str(_tiny_tokenizer(tmp_path / "tokenizer.json")))
    try:
        with server.client() as client:
            client.create_shard(0, MANIFEST)
            client.write(0, items)
            client.create_shard(1, TOPK_MANIFEST)
            client.write(1, make_records(2, topk=True))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.goto(server.url + "/")
            page.wait_for_selector(".seq-item")
            assert "sampled, N = 20" in page.inner_text("#shard-info")
            assert page.locator(".seq-item").count() == 25  # one page
            page.click("#next")
            page.wait_for_selector(".seq-item[data-seq='25']")
            page.click("#prev")
            page.wait_for_selector(".seq-item[data-seq='1']")
            page.click(".seq-item[data-seq='1']")
            page.wait_for_selector(".tok")
            assert page.locator(".tok").count() == record.header.num_positions
            page.click(f".tok[data-pos='{pos}']")
            page.wait_for_selector(".bar-row")
            assert page.locator(".bar-row").count() == record.offsets[pos + 1] - lo
            assert page.locator(".bar-row.label").count() == 1
            assert page.locator(".bar-row.label").get_attribute("data-token") == str(record.token_ids[lo])
            assert "label" in page.inner_text("#pos-info")
            page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
            assert not errors, errors
            assert page.inner_text("#error") == ""
            # switching shards clears what belonged to the other shard
            page.select_option("#shard", "1")
            page.wait_for_selector(".seq-item[data-seq='0']")
            assert page.locator(".tok").count() == 0
            assert page.locator(".bar-row").count() == 0
            assert "top-5" in page.inner_text("#shard-info")
            browser.close()
        assert (tmp_path / "viewer.png").stat().st_size > 10_000
    finally:
        server.stop()
