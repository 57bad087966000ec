"""The browser console in headless Chromium against a running omniserve on the demo catalog:
paste a key, chat with streaming, draw a picture directly and as a /v3 task, speak, transcribe,
and see residency with an admin key. A full-page screenshot is kept in test-artifacts/."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.audio_inputs import SENTENCE, espeak, word_error_rate
from tests.e2e.conftest import RunningServer

# The Chromium driver: the screenshot takes the whole page through its DevTools protocol.
WebDriver = webdriver.Chrome

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SCREENSHOT = ARTIFACTS / "console.png"
PAGE_LOAD_S = 30
MODELS_S = 30
CHAT_S = 120
IMAGE_S = 180
SPEECH_S = 180
TRANSCRIBE_S = 240
MAX_WER = 0.2
IMAGE_SIDE = 128
# Debian's chromium and chromium-driver (scripts/test.sh installs them).
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)


def _found(names: tuple[str, ...]) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    # A missing browser must not pass for a tested console.
    pytest.fail(f"{names[0]} is not installed (Debian: apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = _found(BROWSER_NAMES)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    # Sound may start without a click, as it would after the user's own click on Speak.
    options.add_argument("--autoplay-policy=no-user-gesture-required")
    # The driver by its path: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=_found(DRIVER_NAMES)))
    driver.set_page_load_timeout(PAGE_LOAD_S)
    driver.set_script_timeout(PAGE_LOAD_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, seconds: float, condition: Callable[[WebDriver], Any], what: str) -> Any:
    def failed_status() -> str:
        statuses = driver.find_elements(By.CSS_SELECTOR, "[role=status].error")
        return "; ".join(status.text for status in statuses if status.text)

    return WebDriverWait(driver, seconds, poll_frequency=0.2).until(
        condition, message=f"{what} (page errors: {failed_status() or 'none'})"
    )


def paste_key(driver: WebDriver, key: str) -> None:
    field = driver.find_element(By.ID, "key-input")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()


def options_of(driver: WebDriver, picker: str) -> list[str]:
    return list(
        driver.execute_script("return Array.from(document.getElementById(arguments[0]).options, o => o.value)", picker)
    )


def model_rows(driver: WebDriver) -> dict[str, list[str]]:
    """Each model row's cells (kind, context, residency, device, memory), read in one script:
    the page redraws the table on every refresh, so elements found earlier may be gone."""
    return dict(
        driver.execute_script(
            "return Array.from(document.querySelectorAll('#models-table tbody tr'),"
            " row => [row.dataset.model, Array.from(row.querySelectorAll('td'), cell => cell.textContent)]);"
        )
    )


def fill(driver: WebDriver, field_id: str, text: str) -> None:
    field = driver.find_element(By.ID, field_id)
    field.clear()
    field.send_keys(text)


def image_width(driver: WebDriver, selector: str) -> int:
    """The natural width of the first loaded picture matching `selector` (0 until one loads)."""
    return int(
        driver.execute_script(
            "const picture = document.querySelector(arguments[0]);"
            "return picture && picture.complete ? picture.naturalWidth : 0;",
            selector,
        )
    )


@pytest.fixture(scope="module")
def console(browser: WebDriver, server: RunningServer) -> WebDriver:
    browser.get(f"{server.base_url}/")
    assert browser.title == "omniserve console"
    # Without a key this server answers 401, and the page says so.
    wait(browser, MODELS_S, lambda d: "401" in d.find_element(By.ID, "models-note").text, "the 401 without a key")
    paste_key(browser, server.api_key)
    wait(browser, MODELS_S, lambda d: len(options_of(d, "chat-model")) > 0 and options_of(d, "chat-model")[0], "models")
    return browser


def test_models_are_listed_with_their_kinds_and_residency_needs_an_admin_key(console: WebDriver) -> None:
    rows = model_rows(console)
    kinds = {name: cells[0] for name, cells in rows.items()}
    assert kinds["demo-sd"] == "image" and kinds["whisper-1"] == "transcription" and kinds["demo-tts"] == "speech"
    chat_models = options_of(console, "chat-model")
    assert chat_models and all(kinds[name] == "chat" for name in chat_models)
    assert "demo-sd" in options_of(console, "image-model") and "demo-sd" not in chat_models
    assert "need an admin key" in console.find_element(By.ID, "models-note").text
    assert {cells[2] for cells in rows.values()} == {"needs an admin key"}


def test_chat_streams_the_reply(console: WebDriver) -> None:
    models = options_of(console, "chat-model")
    # The smallest chat model the server lists answers fastest on a CPU.
    Select(console.find_element(By.ID, "chat-model")).select_by_value(
        next((name for name in models if "tiny" in name), models[0])
    )
    fill(console, "chat-max-tokens", "24")
    message = "Hello <b>there</b>"
    fill(console, "chat-input", message)
    console.find_element(By.ID, "chat-send").click()
    reply = wait(
        console,
        CHAT_S,
        lambda d: d.find_element(By.CSS_SELECTOR, ".message.assistant[data-state]"),
        "the streamed reply",
    )
    assert reply.get_attribute("data-state") == "done", console.find_element(By.ID, "chat-status").text
    # Tokens arrived as separate events and were appended as they came.
    assert int(reply.get_attribute("data-chunks") or 0) >= 2
    assert reply.find_element(By.CLASS_NAME, "content").text.strip()
    assert console.find_element(By.ID, "chat-status").text.startswith("Done")
    # What was typed is shown as text, not markup.
    user = console.find_element(By.CSS_SELECTOR, ".message.user .content")
    assert user.text == message
    assert console.find_elements(By.CSS_SELECTOR, "#chat-log b") == []


def _draw(driver: WebDriver, *, as_task: bool) -> None:
    Select(driver.find_element(By.ID, "image-model")).select_by_value("demo-sd")
    Select(driver.find_element(By.ID, "image-size")).select_by_value(str(IMAGE_SIDE))
    fill(driver, "image-steps", "2")
    checkbox = driver.find_element(By.ID, "image-as-task")
    if checkbox.is_selected() != as_task:
        checkbox.click()
    driver.find_element(By.ID, "image-go").click()


def test_image_is_shown(console: WebDriver) -> None:
    _draw(console, as_task=False)
    width = wait(console, IMAGE_S, lambda d: image_width(d, "#image-output img"), "the generated picture")
    assert width == IMAGE_SIDE
    source = console.find_element(By.CSS_SELECTOR, "#image-output img").get_attribute("src") or ""
    assert source.startswith("data:image/png;base64,")


def test_image_task_is_tracked_to_its_picture(console: WebDriver) -> None:
    _draw(console, as_task=True)
    task: WebElement = wait(
        console,
        IMAGE_S,
        lambda d: d.find_element(By.CSS_SELECTOR, "#task-list li[data-status='TASK_STATUS_SUCCEED']"),
        "the /v3 task to succeed",
    )
    task_id = task.get_attribute("data-task-id")
    selector = f"#task-list li[data-task-id='{task_id}'] img"
    assert wait(console, IMAGE_S, lambda d: image_width(d, selector), "the task's picture") == IMAGE_SIDE
    assert task.find_element(By.TAG_NAME, "progress").get_attribute("value") == "100"
    assert task.find_element(By.CLASS_NAME, "task-state").text.startswith("succeed")


def test_speech_plays(console: WebDriver) -> None:
    assert "demo-tts" in options_of(console, "speech-model")
    Select(console.find_element(By.ID, "speech-model")).select_by_value("demo-tts")
    fill(console, "speech-input", "The console speaks.")
    console.find_element(By.ID, "speech-go").click()
    duration = wait(
        console,
        SPEECH_S,
        lambda d: d.execute_script(
            "const audio = document.getElementById('speech-audio');"
            "return !audio.hidden && audio.readyState >= 1 && audio.duration > 0 ? audio.duration : 0;"
        ),
        "playable speech",
    )
    assert 0 < duration < 60
    assert console.find_element(By.ID, "speech-status").text.startswith("Done")


def test_transcription_reads_an_upload(console: WebDriver, tmp_path: Path) -> None:
    recording = tmp_path / "speech.wav"
    recording.write_bytes(espeak(SENTENCE))
    assert "demo-whisper" in options_of(console, "transcribe-model")
    Select(console.find_element(By.ID, "transcribe-model")).select_by_value("demo-whisper")
    console.find_element(By.ID, "transcribe-file").send_keys(str(recording))
    console.find_element(By.ID, "transcribe-go").click()
    text = wait(console, TRANSCRIBE_S, lambda d: d.find_element(By.ID, "transcribe-output").text, "the transcription")
    assert word_error_rate(SENTENCE, text) < MAX_WER, text


def _admin_key(server: RunningServer) -> str:
    env = {
        **os.environ,
        "OMNISERVE_DATA_DIR": str(server.data_dir),
        "OMNISERVE_CONFIG": str(server.data_dir / "omniserve.toml"),
    }
    created = subprocess.run(
        [sys.executable, "-m", "server", "keys", "create", "console-admin", "--admin"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return created.split("key: ", 1)[1].split()[0]


def test_admin_key_shows_residency_and_memory(console: WebDriver, server: RunningServer) -> None:
    paste_key(console, _admin_key(server))

    def with_residency(driver: WebDriver) -> dict[str, list[str]] | None:
        rows = model_rows(driver)
        return rows if "demo-sd" in rows and rows["demo-sd"][2] != "needs an admin key" else None

    rows = wait(console, MODELS_S, with_residency, "residency with an admin key")
    cells = rows["demo-sd"]
    # kind, context, residency, device, memory: demo-sd drew the pictures above.
    assert cells[0] == "image"
    assert cells[2] in ("resident", "sleeping", "unloaded", "loading", "unloading")
    assert "need an admin key" not in console.find_element(By.ID, "models-note").text
    assert console.find_elements(By.CSS_SELECTOR, "#devices meter")
    assert "resident" in {row[2] for row in rows.values()}, "the startup models are resident"

    ARTIFACTS.mkdir(exist_ok=True)
    # The whole page, not only the window: Chromium draws beyond the viewport on request.
    height = console.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]["height"]
    # The window's width: drawn beyond the viewport, the page has no scroll bar to leave out.
    page = {"x": 0, "y": 0, "width": console.execute_script("return window.innerWidth"), "height": height, "scale": 1}
    shot = console.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": page}
    )
    SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
    print(f"console screenshot: {SCREENSHOT}")
