"""The Gradio demo in a real browser: the app runs in-process on a free local port and headless Debian Chromium
(`make browser`) drives it with Playwright.

Checks: coding a text in mode `retrieval` and in mode `rag` (base model, no adapter needed) shows a valid ICD-10-GM
code with its German title; a CSV with an empty row codes to a downloadable JSONL with one line per row, ids in
order and an `error` on the empty row; an empty text shows the error sentence and the app still answers afterwards.
Screenshots of the code and batch tabs go to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ICD_CODE = re.compile(r"\b([A-Z]\d\d(?:\.\d{1,2})?)\b")  # C50.4, C61
LLM_TIMEOUT_MS = 240_000  # the first LLM call loads Gemma 270M and compiles the constraints
RETRIEVAL_TIMEOUT_MS = 120_000  # the first retrieval call loads the index and the embedding model


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"The demo did not answer on {url} within {timeout:.0f} s.")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from oncocoder.ui.app import launch

    port = _free_port()
    demo = launch("127.0.0.1", port, block=False, upload_dir=tmp_path_factory.mktemp("ui-out"))
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_up(url)
        yield url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        pytest.fail("Debian Chromium is not installed (no `chromium` on PATH, no /usr/bin/chromium); "
                    "run `make browser` first.")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.goto(app_url)
    pg.locator("#code-run").wait_for(timeout=30_000)
    yield pg
    context.close()


@pytest.fixture(scope="module")
def catalogue():
    from oncocoder.index.catalogue import load_catalogue

    return load_catalogue()


def code_text(page, text: str, mode: str, timeout_ms: int) -> str:
    """Type `text`, pick `mode`, run, and return the text of the ICD-10-GM result card once it shows."""
    from playwright.sync_api import expect

    page.locator("#code-text textarea").fill(text)
    page.locator("#code-mode").get_by_label(mode, exact=True).check()
    page.locator("#code-run").click()
    expect(page.locator("#code-meta")).to_contain_text(f"Modus: {mode} ·", timeout=timeout_ms)
    return page.locator("#icd10gm-result").inner_text()


def assert_valid_icd(card: str, catalogue) -> str:
    match = ICD_CODE.search(card)
    assert match, f"no ICD-10-GM code in the result card: {card!r}"
    code = match.group(1)
    assert catalogue.is_valid(code, "icd10gm"), f"{code} is not a codable ICD-10-GM code"
    assert catalogue.title(code, "icd10gm") in card, f"the German title of {code} is missing: {card!r}"
    return code


def test_code_tab_retrieval_and_rag(page, catalogue):
    from playwright.sync_api import expect

    card = code_text(page, "Adeno-Ca Sigma mit hepatischen Filiae", "retrieval", RETRIEVAL_TIMEOUT_MS)
    assert_valid_icd(card, catalogue)
    expect(page.locator("#candidates-table")).to_contain_text("✓")

    card = code_text(page, "Mamma-Ca li. oben außen", "rag", LLM_TIMEOUT_MS)
    code = assert_valid_icd(card, catalogue)
    assert code.startswith(("C", "D")), f"a breast cancer text coded outside the neoplasms: {code}"
    for system in ("icdo-topography", "icdo-morphology"):
        assert page.locator(f"#{system}-result").inner_text().strip()
    assert re.search(r"Konfidenz: \d+ %", card), card
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-code-tab.png"), full_page=True)


def test_empty_text_shows_error_then_app_still_answers(page, catalogue):
    from playwright.sync_api import expect

    page.locator("#code-text textarea").fill("   ")
    page.locator("#code-mode").get_by_label("retrieval", exact=True).check()
    page.locator("#code-run").click()
    expect(page.locator("#code-status")).to_contain_text("The text is empty", timeout=30_000)
    card = code_text(page, "NSCLC re. OL", "retrieval", RETRIEVAL_TIMEOUT_MS)
    assert_valid_icd(card, catalogue)
    expect(page.locator("#code-status")).not_to_contain_text("empty")


def test_batch_tab_csv_to_jsonl_download(page, tmp_path):
    from playwright.sync_api import expect

    ids = ["r1", "r2", "r3", "r4"]
    src = tmp_path / "diagnosen.csv"
    src.write_text("id,text\nr1,Basaliom Nasenrücken\nr2,Z.n. Prostatakarzinom\nr3,\nr4,NSCLC re. OL\n",
                   encoding="utf-8")
    page.get_by_role("tab", name="Batch").click()
    page.locator("#batch-upload input[type=file]").set_input_files(str(src))
    expect(page.locator("#batch-upload")).to_contain_text("diagnosen.csv", timeout=30_000)
    page.locator("#batch-mode").get_by_label("retrieval", exact=True).check()
    page.locator("#batch-run").click()
    expect(page.locator("#batch-summary")).to_contain_text("4 Zeilen", timeout=RETRIEVAL_TIMEOUT_MS)
    link = page.locator("#batch-download a[download]").first
    expect(link).to_be_visible(timeout=30_000)
    with page.expect_download() as info:
        link.click()
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    assert saved.suffix == ".jsonl"
    lines = saved.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(ids), lines
    preds = [json.loads(line) for line in lines]
    assert [p["id"] for p in preds] == ids
    assert preds[2]["error"] and "empty" in preds[2]["error"]
    assert all(p["error"] is None and p["icd10gm"]["code"] for i, p in enumerate(preds) if i != 2)
    expect(page.locator("#batch-summary")).to_contain_text("1 mit Fehler")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-batch-tab.png"), full_page=True)
