"""The web viewer in a real headless browser (Debian's Chromium, driven by Playwright).

One server (a real ``logitcache serve`` process, two tokenizers given) holds every shard the tests
look at, and one browser serves them all; each test gets a fresh page, and any console error or
page error fails it (a 404 the test itself provokes is allowed only for the exact resource). The
shards:

* 0: sampled (N = 20), seqs 0..29, tokenizer A's fingerprint, a teacher run over corpus C;
* 1: top-k (k = 5) of the same teacher over the same input ids, seqs 0..9, tokenizer A, corpus C;
  seq 0 holds fixed probabilities (0.9, 0.05, 0.01, 0.005, 0.002: residual 0.033) everywhere;
* 2: top-k over byte-level tokenizer B's ids: spaces, tabs, newlines and a lone UTF-8 lead byte;
* 3: sampled, with a fingerprint no loaded tokenizer has (and other input ids).
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from logitcache.core import records
from logitcache.core.manifest import TeacherRun
from logitcache.core.tokenizers import tokenizer_fingerprint
from logitcache.targets.sampling import sample_random, sample_topk
from logitcache.targets.sparse import SparseTargets
from logitcache.targets.synthetic import lm_like_logits
from logitcache.testing import ServerProcess
from tests.server.helpers import MANIFEST, SEQ_LEN, TOPK_MANIFEST, VOCAB, make_records
from tests.server.http.test_routes import _tiny_tokenizer, _word

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

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
SAMPLED_SEQS = 30
TOPK_SEQS = 10
FIXED_PROBS = [0.9, 0.05, 0.01, 0.005, 0.002]
MISMATCH = "xxh64:00000000deadbeef"
RUN = TeacherRun(
    corpus_fingerprint="xxh64:c0ffee", sequences=SAMPLED_SEQS, world_size=1, rank=0, seq_start=0, seq_stop=30, seed=0
)
BYTE_TEXT = "a b\tc\nd é"  # é is two bytes: alone, each decodes to U+FFFD


def _byte_tokenizer(path: Path) -> tuple[Path, list[int]]:
    """A byte-level tokenizer (256 ids, one per byte, no merges), and the ids of :data:`BYTE_TEXT`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path, tokenizer.encode(BYTE_TEXT).ids


def _fingerprint(path: Path) -> str:
    from tokenizers import Tokenizer

    return tokenizer_fingerprint(Tokenizer.from_file(str(path)))


def _topk(token_ids: list[list[int]], probs: list[float]) -> SparseTargets:
    """Top-k targets with the same ``probs`` (decreasing) at every position."""
    positions = len(token_ids)
    k = len(probs)
    return SparseTargets(
        kind="topk",
        vocab_size=VOCAB,
        token_ids=torch.tensor(token_ids, dtype=torch.int64).flatten(),
        values=torch.tensor(probs * positions, dtype=torch.float32),
        offsets=torch.arange(0, positions * k + 1, k, dtype=torch.int64),
        k=k,
    )


def _corpus_records() -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]], int]:
    """Sampled and top-k records of one teacher over the same input ids; and a position of seq 1
    whose label is among its sampled entries."""
    gen = torch.Generator().manual_seed(4)
    sampled, topk = [], []
    label_pos = 2
    for seq in range(SAMPLED_SEQS):
        logits = lm_like_logits(SEQ_LEN, VOCAB, generator=gen)
        ids = torch.randint(0, VOCAB, (SEQ_LEN,), generator=gen)
        targets = sample_random(logits, 20, generator=gen)
        if seq == 1:  # the label of one position among its entries, so that the chart highlights it
            ids[label_pos + 1] = targets.token_ids[targets.offsets[label_pos]]
        sampled.append((seq, records.encode(ids, targets)))
        if seq == 0:
            rows = [[int(i) for i in torch.randperm(VOCAB, generator=gen)[:5]] for _ in range(SEQ_LEN)]
            topk.append((seq, records.encode(ids, _topk(rows, FIXED_PROBS))))
        elif seq < TOPK_SEQS:
            topk.append((seq, records.encode(ids, sample_topk(logits, 5))))
    return sampled, topk, label_pos


@dataclasses.dataclass
class Site:
    server: ServerProcess
    sampled: list[tuple[int, bytes]]
    byte_ids: list[int]
    label_pos: int


@dataclasses.dataclass
class View:
    page: Any
    url: str
    errors: list[str]
    allowed_404: list[str]  # paths whose 404 the test provokes on purpose

    def open(self, query: str = "") -> None:
        self.page.goto(self.url + "/" + query)

    def done(self) -> None:
        assert not self.errors, self.errors
        assert self.page.inner_text("#error") == ""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("viewer")
    (root / "words").mkdir()
    words = _tiny_tokenizer(root / "words" / "tokenizer.json")
    byte_path, byte_ids = _byte_tokenizer(root / "bytes" / "tokenizer.json")
    sampled, topk, label_pos = _corpus_records()
    byte_record = records.encode(
        np.resize(byte_ids, SEQ_LEN),
        _topk([[byte_ids[1], byte_ids[5], byte_ids[8], 64, byte_ids[3]]] * SEQ_LEN, [0.5, 0.2, 0.1, 0.05, 0.02]),
    )
    server = ServerProcess(root / "data", "--tokenizer", str(words), "--tokenizer", str(byte_path.parent))
    words_fp, bytes_fp = _fingerprint(words), _fingerprint(byte_path)
    with server.client() as client:
        client.create_shard(0, dataclasses.replace(MANIFEST, tokenizer_fingerprint=words_fp, run=RUN))
        client.write(0, sampled)
        client.create_shard(1, dataclasses.replace(TOPK_MANIFEST, tokenizer_fingerprint=words_fp, run=RUN))
        client.write(1, topk)
        client.create_shard(2, dataclasses.replace(TOPK_MANIFEST, tokenizer_fingerprint=bytes_fp))
        client.write(2, [(0, byte_record)])
        client.create_shard(3, dataclasses.replace(MANIFEST, tokenizer_fingerprint=MISMATCH))
        client.write(3, make_records(2, seed=9))
    yield Site(server, sampled, byte_ids, label_pos)
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _view(browser: Any, url: str) -> Iterator[View]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    view = View(page, url, [], [])

    def on_console(message: Any) -> None:
        if message.type != "error":
            return
        where = message.location.get("url", "")
        if "status of 404" in message.text and any(where.endswith(path) for path in view.allowed_404):
            return
        view.errors.append(f"{message.text} ({where})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: view.errors.append(str(exc)))
    yield view
    context.close()
    assert not view.errors, view.errors


@pytest.fixture
def view(browser: Any, site: Site) -> Iterator[View]:
    yield from _view(browser, site.server.url)


def _query(page: Any) -> dict[str, str]:
    return dict(re.findall(r"[?&]([^=&]+)=([^&]*)", page.url))


# ---- the tests ---------------------------------------------------------------------------------------


def test_first_run_page_says_how_to_fill_the_cache(browser: Any, tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    try:
        for view in _view(browser, server.url):
            view.open()
            page = view.page
            expect(page.locator("#first-run")).to_be_visible()
            command = page.inner_text("#teacher-command")
            assert "logitcache teacher" in command
            assert f"--server {server.address}" in command
            assert "logitcache demo" in page.inner_text("#first-run")
            assert page.locator("#browse").is_hidden()
            assert page.locator("#overview").is_hidden()
            with server.client() as client:  # the page notices the first shard by itself
                client.create_shard(0, MANIFEST)
                client.write(0, make_records(1))
            expect(page.locator("#overview")).to_be_visible()
            expect(page.locator("#first-run")).to_be_hidden()
            with server.client() as client:  # the only shard is deleted: the next navigation says how to fill it
                client.delete_shard(0)
            view.allowed_404.append("/v1/shards/0")
            page.click("#tabs button[data-view='browse']")
            expect(page.locator("#first-run")).to_be_visible()
            assert page.locator("#browse").is_hidden()
            view.done()
    finally:
        server.stop()


def test_overview_histograms_completeness_and_manifest(view: View, site: Site) -> None:
    view.open("?shard=0")
    page = view.page
    page.wait_for_selector(".hist[data-name='entropy'] .hist-bar")
    names = page.eval_on_selector_all(".hist", "figures => figures.map(f => f.dataset.name)")
    assert names == ["unique", "entropy", "residual", "label", "bytes"]
    positions = SAMPLED_SEQS * SEQ_LEN
    for name, total in (("unique", positions), ("entropy", positions), ("residual", positions), ("bytes", 30)):
        counts = page.eval_on_selector_all(
            f".hist[data-name='{name}'] .hist-bar", "bars => bars.map(b => +b.dataset.count)"
        )
        assert sum(counts) == total, name
        assert f"{total:,}" in page.inner_text(f".hist[data-name='{name}'] .hist-summary")
    assert f"{positions:,} positions of the first 30 seqs" in page.inner_text("#stats-caption")
    assert "nats, 0 … 3.00" in page.inner_text(".hist[data-name='entropy'] figcaption")  # log 20
    entries = page.eval_on_selector_all(".hist[data-name='unique'] .hist-bar", "bars => bars.length")
    assert entries == 20  # 1 … N entries
    assert page.inner_text("#completeness dd[data-key='sequences']") == "30"
    assert page.inner_text("#completeness dd[data-key='missing']") == "0"
    manifest = page.inner_text("#manifest")
    assert "sampled N = 20" in manifest
    assert "tiny" in manifest
    assert "xxh64:c0ffee" in manifest
    assert "words/tokenizer.json" in manifest  # the tokenizer chosen for the shard
    # a top-k shard's residual mass is not all zero; its missing seqs are counted against the run
    page.select_option("#shard", "1")
    expect(page.locator("#completeness dd[data-key='missing']")).to_have_text("20")
    page.wait_for_selector(".hist[data-name='residual'] .hist-bar")
    residual = page.eval_on_selector_all(
        ".hist[data-name='residual'] .hist-bar", "bars => bars.map(b => +b.dataset.count)"
    )
    assert sum(residual) == TOPK_SEQS * SEQ_LEN
    assert residual[0] < sum(residual)
    assert "Missing seqs: [10, 30)" in page.inner_text("#gaps")
    view.done()


def test_deep_link_restores_shard_seq_and_position(view: View) -> None:
    view.open("?shard=1&view=browse&seq=2&pos=5")
    page = view.page
    page.wait_for_selector(".tok.active[data-pos='5']")
    assert page.input_value("#shard") == "1"
    assert "Shard 1, seq 2" in page.inner_text("#seq-title")
    assert page.locator(".seq-item.active[data-seq='2']").count() == 1
    assert page.locator("#chart-main .bar-row").count() == 6  # k = 5, and the residual
    assert "Position 5 of seq 2" in page.inner_text("#pos-title")
    # a click goes in the address; back restores the deep-linked position
    page.click(".tok[data-pos='7']")
    page.wait_for_selector(".tok.active[data-pos='7']")
    assert _query(page)["pos"] == "7"
    page.go_back()
    page.wait_for_selector(".tok.active[data-pos='5']")
    assert _query(page) == {"shard": "1", "view": "browse", "seq": "2", "pos": "5"}
    view.done()


def test_paging_jump_to_seq_and_a_seq_that_is_not_there(view: View, site: Site) -> None:
    view.open("?shard=0&view=browse")
    page = view.page
    page.wait_for_selector(".seq-item")
    assert page.locator(".seq-item").count() == 25  # one page
    page.click("#next")
    page.wait_for_selector(".seq-item[data-seq='25']")
    page.click("#prev")
    page.wait_for_selector(".seq-item[data-seq='1']")
    page.click(".seq-item[data-seq='1']")
    page.wait_for_selector(".tok")
    assert page.locator(".tok").count() == SEQ_LEN
    page.click(f".tok[data-pos='{site.label_pos}']")
    page.wait_for_selector("#chart-main .bar-row")
    assert page.locator("#chart-main .bar-row.label").count() == 1
    assert "label" in page.inner_text("#pos-info")
    page.fill("#jump-seq", "17")
    page.press("#jump-seq", "Enter")
    expect(page.locator("#seq-title")).to_contain_text("seq 17")
    expect(page.locator(".seq-item").first).to_have_attribute("data-seq", "17")
    assert _query(page)["seq"] == "17"
    view.allowed_404.append("/v1/shards/0/sequences/999")
    page.fill("#jump-seq", "999")
    page.click("#jump button")
    expect(page.locator("#seq-message")).to_have_text("seq 999 is not in shard 0")
    assert "No seq 999" in page.inner_text("#seq-title")
    assert page.locator(".tok").count() == 0
    view.done()


def _width_ratio(row: Any) -> float:
    bar, track = row.locator(".bar").bounding_box(), row.locator(".track").bounding_box()
    return float(bar["width"] / track["width"])


def test_bars_are_absolute_and_top_k_shows_its_residual(view: View) -> None:
    view.open("?shard=1&view=browse&seq=0&pos=0")
    page = view.page
    page.wait_for_selector("#chart-main .bar-row.residual")
    rows = page.locator("#chart-main .bar-row:not(.residual)")
    probs = [float(rows.nth(i).get_attribute("data-prob")) for i in range(rows.count())]
    assert probs == pytest.approx(FIXED_PROBS, rel=0.02)
    assert _width_ratio(rows.nth(0)) == pytest.approx(0.9, abs=0.02)  # not scaled to the row's maximum
    assert _width_ratio(rows.nth(4)) < 0.01  # 0.002 looks small
    residual = page.locator("#chart-main .bar-row.residual")
    assert float(residual.get_attribute("data-prob")) == pytest.approx(1 - sum(FIXED_PROBS), abs=0.002)
    assert _width_ratio(residual) == pytest.approx(0.033, abs=0.01)
    assert "residual" in residual.inner_text()
    assert "[0, 1]" in page.inner_text("#scale-caption")
    # the log scale, by choice, in the address too
    page.select_option("#scale", "log")
    expect(page.locator("#scale-caption")).to_contain_text("log")
    assert _width_ratio(page.locator("#chart-main .bar-row").nth(4)) == pytest.approx(
        (np.log10(0.002) + 4) / 4, abs=0.02
    )
    assert _query(page)["scale"] == "log"
    # the token colours use an absolute scale, stated in the legend: every position of this seq has the
    # same low entropy, which a scale relative to the sequence would paint its top colour (red)
    assert "log 5" in page.inner_text("#legend")
    body = httpx.get(f"{view.url}/v1/shards/1/sequences/0", timeout=30).json()
    entropy = body["positions"][0]["entropy"]
    assert entropy == pytest.approx(-sum(p * math.log(p) for p in FIXED_PROBS), rel=0.02)
    hue = round(220 * (1 - entropy / math.log(5)))
    assert hue > 150  # blue-green: low entropy
    expected = [round(255 * c) for c in colorsys.hls_to_rgb(hue / 360, 0.82, 0.70)]
    colour = page.eval_on_selector(".tok[data-pos='3']", "t => getComputedStyle(t).backgroundColor")
    assert [int(c) for c in re.findall(r"\d+", colour)] == pytest.approx(expected, abs=2)
    view.done()


def test_whitespace_is_visible_and_undecodable_tokens_show_their_id(view: View, site: Site) -> None:
    view.open("?shard=2&view=browse&seq=0&pos=0")
    page = view.page
    page.wait_for_selector("#chart-main .bar-row")
    tokens = page.locator(".tok")
    ids = site.byte_ids
    texts = [tokens.nth(i).inner_text() for i in range(len(ids))]
    assert texts[: len(ids)] == ["a", "·", "b", "→", "c", "↵", "d", "·", f"�‹{ids[8]}›", f"�‹{ids[9]}›"]
    assert page.locator(".tok .ws").count() >= 4
    # a newline token ends its line: the next token starts a new one
    newline, after = tokens.nth(5).bounding_box(), tokens.nth(6).bounding_box()
    assert after["y"] > newline["y"] + newline["height"] / 2
    names = page.locator("#chart-main .bar-row .name")
    assert [names.nth(i).inner_text() for i in range(4)] == ["·", "↵", f"�‹{ids[8]}›", "a"]
    assert page.locator("#tokenizer-warning").is_hidden()  # tokenizer B matched
    view.done()


def test_layout_works_at_800_px(view: View) -> None:
    page = view.page
    page.set_viewport_size({"width": 800, "height": 700})
    view.open("?shard=0&view=browse&seq=3&pos=4&compare=1")
    page.wait_for_selector("#chart-compare .bar-row")
    sequence = page.locator("#sequence").bounding_box()
    assert sequence["width"] > 250
    assert page.locator("#sequences").bounding_box()["width"] > 120
    position = page.locator("#position").bounding_box()
    assert position["width"] > 500  # below the two columns, full width
    for col in ("#chart-main", "#chart-compare"):
        assert page.locator(col).bounding_box()["width"] > 200
    assert page.evaluate("document.documentElement.scrollWidth") <= 800  # nothing sticks out sideways
    page.set_viewport_size({"width": 1600, "height": 900})
    wide = page.locator("#position").bounding_box()
    assert wide["y"] == pytest.approx(page.locator("#sequence").bounding_box()["y"], abs=2)  # three columns
    view.done()


def test_compare_two_shards_side_by_side(view: View, site: Site) -> None:
    view.open("?shard=0&view=browse&seq=3&pos=4")
    page = view.page
    page.wait_for_selector("#chart-main .bar-row")
    assert page.locator("#chart-compare").is_hidden()
    page.select_option("#compare", "1")
    page.wait_for_selector("#chart-compare .bar-row.residual")
    assert "Shard 0 · sampled N = 20" in page.inner_text("#chart-main .chart-title")
    assert "Shard 1 · top-5" in page.inner_text("#chart-compare .chart-title")
    assert page.locator("#chart-compare .bar-row").count() == 6
    assert "Same input ids in both shards (corpus xxh64:c0ffee)" in page.inner_text("#compare-info")
    main, other = page.locator("#chart-main").bounding_box(), page.locator("#chart-compare").bounding_box()
    assert other["x"] > main["x"] + main["width"] - 1
    assert abs(other["y"] - main["y"]) < 2
    assert _query(page)["compare"] == "1"
    # a seq the second shard does not hold
    view.allowed_404.append("/v1/shards/1/sequences/20")
    page.fill("#jump-seq", "20")
    page.press("#jump-seq", "Enter")
    expect(page.locator("#seq-title")).to_contain_text("seq 20")
    page.click(".tok[data-pos='1']")
    expect(page.locator("#compare-info")).to_contain_text("Shard 1 does not hold seq 20")
    assert "seq 20 is not in shard 1" in page.inner_text("#chart-compare .pos-info")
    assert page.locator("#chart-compare .bar-row").count() == 0
    # other input ids under the same seq number: a warning
    view.open("?shard=0&view=browse&seq=0&pos=0&compare=3")
    page.wait_for_selector("#chart-compare .bar-row")
    expect(page.locator("#compare-info")).to_contain_text("input ids of seq 0 differ (first at pos 0)")
    view.done()


def test_each_shard_is_decoded_with_the_tokenizer_it_records(view: View, site: Site) -> None:
    view.open("?shard=0&view=browse&seq=0")
    page = view.page
    page.wait_for_selector(".tok")
    first = records.decode(site.sampled[0][1]).input_ids[:3].tolist()
    assert [page.locator(".tok").nth(i).inner_text() for i in range(3)] == [_word(i) for i in first]
    assert page.locator("#tokenizer-warning").is_hidden()
    page.select_option("#shard", "2")
    expect(page.locator(".tok").first).to_have_text("a")  # tokenizer B, picked by its fingerprint
    assert page.locator("#tokenizer-warning").is_hidden()
    page.select_option("#shard", "3")
    warning = page.locator("#tokenizer-warning")
    expect(warning).to_be_visible()
    expect(warning).to_have_class("warn")
    assert "mismatch" in warning.inner_text()
    assert MISMATCH in warning.inner_text()
    page.wait_for_selector(".tok .tok-id.only")
    ids = records.decode(make_records(1, seed=9)[0][1]).input_ids.tolist()
    assert page.locator(".tok").first.inner_text() == f"#{ids[0]}"
    page.click(".tok[data-pos='0']")
    page.wait_for_selector("#chart-main .bar-row")
    assert page.locator("#chart-main .bar-row .tok-id.only").count() == page.locator("#chart-main .bar-row").count()
    assert "tokenizer mismatch" in page.inner_text("#chart-main .pos-info")
    view.done()
