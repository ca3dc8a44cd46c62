"""A real browser on the dashboard: Debian's headless chromium, driven by Selenium 4.

The system chromedriver is passed explicitly, so Selenium Manager never downloads a
browser or driver. Screenshots go to tests/artifacts/ (kept out of git) for people to look
at: the trial table of a study, and one trial's note with its artifact images.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.search.conftest import finished_study, start_dashboard, study_config, study_ids

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = Path(__file__).resolve().parents[1] / "artifacts"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)

# No skip when chromium is missing: `make test` installs it (tools/system-deps.sh), and a
# suite that quietly leaves the dashboard untested must not say "passed".
pytestmark = [pytest.mark.browser, pytest.mark.process]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert path.exists(), f"{path} missing: run `make system-deps` (apt chromium-driver)"
    options = Options()
    options.binary_location = str(CHROMIUM)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(
            service=Service(executable_path=str(CHROMEDRIVER)), options=options
        )
        driver.set_page_load_timeout(60)
        yield driver
        driver.quit()


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory, nsmc_csv) -> Iterator[tuple[str, int]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('browse') / 'study.db'}"
    finished_study(url, study_config(nsmc_csv(300)))
    proc, base, _ = start_dashboard("--storage", url)
    yield base, study_ids(base)["watch"]
    proc.terminate()
    proc.wait(timeout=30)


def wait_for(driver, css: str, count: int = 1, timeout: float = 60) -> list:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def found(d):
        elements = d.find_elements(By.CSS_SELECTOR, css)
        return elements if len(elements) >= count else False

    return WebDriverWait(driver, timeout).until(found)


def screenshot(driver, element, name: str) -> None:
    """Scroll ``element`` to the middle of the window and save the window as a PNG."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    SHOTS.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(SHOTS / name))


def test_the_study_page_shows_the_trial_table(browser, dashboard) -> None:
    base, sid = dashboard
    # optuna-dashboard 0.21 shows its trial table on the "Trials (Selection)" page.
    browser.get(f"http://{base}/dashboard/studies/{sid}/smartSelection")
    rows = wait_for(browser, "table tbody tr", count=2)
    header = browser.find_element("css selector", "table thead").text
    assert "Number" in header and "State" in header and "Param focal_gamma" in header
    cells = [[td.text for td in row.find_elements("css selector", "td")] for row in rows]
    assert [c[:2] for c in cells] == [["0", "Complete"], ["1", "Pruned"]]
    assert "completed" in cells[0] and "pruned at evaluation 2" in cells[1]  # end_reason
    screenshot(browser, rows[0], "dashboard.png")


def test_a_trial_shows_its_note_and_artifact_images(browser, dashboard) -> None:
    base, sid = dashboard
    browser.get(f"http://{base}/dashboard/studies/{sid}/trials")
    images = wait_for(browser, "img[src*='/artifacts/']", count=2)
    # naturalWidth > 0 only once the PNG has really been fetched and decoded.
    widths = [browser.execute_script("return arguments[0].naturalWidth", i) for i in images]
    assert all(w > 200 for w in widths), widths
    assert "Trial 0: completed" in browser.find_element("css selector", "body").text
    screenshot(browser, images[0], "dashboard-trial.png")
