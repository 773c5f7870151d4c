"""The HTML pages in a real headless browser (Debian's `chromium` + `chromium-driver`, driven by selenium):
they load with no console errors and no network requests, and every figure renders.

Skips with the reason where Chromium, its driver or selenium is absent; `.ci/run` installs them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from synthetic_runs import GPU_ENV, grid, write_run

from kvbench.cli.app import main

FIGURES = {"speedup", "decode_steps", "positions", "memory", "bandwidth", "cache_tradeoff", "cache_memory_latency"}
MARKUP = '<script>alert("x")</script><img src="http://example.invalid/x.png" onerror="alert(1)">'


def find(*names):
    return next((path for name in names if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    chromium = find("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    driver_path = find("chromedriver")
    if not chromium:
        pytest.skip("no Chromium here (apt-get install chromium chromium-driver)")
    if not driver_path:
        pytest.skip("no chromedriver here (apt-get install chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,2000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def load(driver, path) -> dict:
    """Open a page; return its console messages, the URLs it requested, and what its images did."""
    driver.get_log("browser"), driver.get_log("performance")  # drop what earlier pages left
    driver.get(path.resolve().as_uri())
    # get() returns once the document is parsed; its inline images may still be decoding on a busy machine
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")
    images = driver.execute_script(
        "return Array.from(document.images).map(i => ({figure: i.dataset.figure, complete: i.complete,"
        " width: i.naturalWidth, height: i.naturalHeight, shown: i.getBoundingClientRect().width}))")
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    return {
        "console": driver.get_log("browser"),
        "requests": requests,
        "resources": driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"),
        "images": images,
        "text": driver.execute_script("return document.body.innerText"),
    }


def assert_clean(page, path):
    assert page["console"] == [], page["console"]
    page_url = path.resolve().as_uri()
    assert [u for u in page["requests"] if u != page_url and not u.startswith("data:")] == []
    assert [u for u in page["resources"] if not u.startswith("data:")] == []


def test_report_loads_offline_without_errors_and_every_figure_renders(tmp_path, browser):
    cpu = write_run(tmp_path / "cpu-run", grid(model=MARKUP))
    gpu = write_run(tmp_path / "gpu-run", grid(env=GPU_ENV, dtype="float16"))
    out = tmp_path / "report"
    assert main(["report", str(cpu), str(gpu), "--out", str(out)]) == 0
    page = load(browser, out / "report.html")
    assert_clean(page, out / "report.html")
    assert {img["figure"] for img in page["images"]} == FIGURES
    for img in page["images"]:
        assert img["complete"] and img["width"] > 100 and img["height"] > 100 and img["shown"] > 100, img
    assert MARKUP in page["text"]  # shown as text, never run or fetched
    assert "peak 3,352 GB/s" not in page["text"]  # figure text lives in the images, not the page


def test_degraded_report_and_compare_page_load_cleanly(tmp_path, browser):
    records = grid(prompts=(16,), news=(8,), batches=(1,), repeats=7)  # 7 a side: a change can be significant
    for rec in records:
        rec.pop("decode_steps_s")
    base = write_run(tmp_path / "base", records)
    new = write_run(tmp_path / "new", grid(prompts=(16,), news=(8,), batches=(1,), slow=1.3, model=MARKUP, repeats=7))
    out = tmp_path / "out"
    assert main(["report", str(base), "--out", str(out)]) == 0
    page = load(browser, out / "report.html")
    assert_clean(page, out / "report.html")
    assert {img["figure"] for img in page["images"]} == FIGURES - {"decode_steps"}
    assert "No figure: per-step latency: the records have no decode_steps_s." in page["text"]
    assert main(["compare", str(base), str(new), "--out", str(out)]) == 1
    page = load(browser, out / "compare.html")
    assert_clean(page, out / "compare.html")
    assert [img["figure"] for img in page["images"]] == ["compare"]
    assert all(img["complete"] and img["width"] > 100 for img in page["images"])
    assert MARKUP in page["text"]


def test_header_shows_model_device_dtype_and_version(tmp_path, browser):
    """What a reader sees first: the header names the model, device, dtype and kvbench version, on screen in the
    first view, and At a glance repeats them. A screenshot is saved (to $KVBENCH_SCREENSHOTS if set)."""
    import os

    from selenium.webdriver.common.by import By

    run = write_run(tmp_path / "gpu-run", grid(env=GPU_ENV, dtype="float16"))
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out)]) == 0
    page = load(browser, out / "report.html")
    assert_clean(page, out / "report.html")
    expected = {"model": "tiny-llama (llama, config.json (random weights))",
                "device": "cuda (NVIDIA H100 80GB HBM3)", "dtype": "float16", "kvbench": "0.1.0"}
    height = browser.execute_script("return window.innerHeight")
    for field, value in expected.items():
        cell = browser.find_element(By.CSS_SELECTOR, f'dl.header dd[data-field="{field}"]')
        label = cell.find_element(By.XPATH, "preceding-sibling::dt")
        assert cell.is_displayed() and cell.text == value
        assert label.text.rstrip(":") == field  # the ":" is CSS generated content
        assert cell.rect["y"] + cell.rect["height"] < height  # in the first view, no scrolling
    glance = browser.find_element(By.ID, "glance").text
    for field, value in expected.items():
        assert f"{field} {value}" in glance
    assert "79.2 GiB of GPU memory (weights 0.015%, largest KV cache 0.00076%)" in glance
    shots = os.environ.get("KVBENCH_SCREENSHOTS")
    target = (Path(shots) if shots else tmp_path) / "report-header.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(target)) and target.stat().st_size > 10_000
