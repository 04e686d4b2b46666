"""The browser demo end to end: `python app.py` in a subprocess, driven in a real headless Chromium.

What the page shows is checked against the transformers pipeline run here on the same video with the same settings
(an independent path to the instances), never against the app's own functions. The browser tests need gradio,
playwright (the test extra) and Debian's `chromium` (no browser download): without them they skip, and with
CI=true they fail instead, so a CI run cannot pass by skipping them (the rule of conftest's require_parity_dir).
VISTR_UPDATE_SCREENSHOT=1 also writes the page after a run to assets/app_screenshot.png.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest
from transformers import pipeline
from vistr.image_processing_vistr import VisTRVideoProcessor
from vistr.video_io import iter_frames, video_fps

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = REPO_ROOT / "app.py"
MODEL = REPO_ROOT / "assets" / "vistr-tiny-synthetic"
SAMPLE = REPO_ROOT / "assets" / "sample.mp4"
SCREENSHOT = REPO_ROOT / "assets" / "app_screenshot.png"
SCREENSHOT_MAX_BYTES = 300_000  # a committed image stays small
STARTUP_SECONDS = 180  # bounded wait for the app to answer: it imports torch and loads the model first
PAGE_TIMEOUT_MS = 180_000  # bounded wait for any step on the page, a run of the model included
ALL_FLIPS = ["horizontal", "vertical", "both"]

pytestmark = pytest.mark.slow


def require_browser() -> str:
    """The path of Debian's chromium, when gradio and playwright are installed too; else skip, or fail under
    CI=true (CI must run the browser tests)."""
    missing = [name for name in ("gradio", "playwright") if importlib.util.find_spec(name) is None]
    chromium = shutil.which("chromium")
    if chromium is None:
        missing.append("chromium (apt-get install -y chromium)")
    if missing:
        message = f"the browser demo tests need {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI must run them")
        pytest.skip(message)
    return chromium


@dataclass
class RunningApp:
    url: str
    process: subprocess.Popen
    tmp: Path  # its TMPDIR, where it makes its staging folder
    cwd: Path  # its working directory, which it must not write in
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(root: Path) -> RunningApp:
    """`python app.py` on a free port of 127.0.0.1, with its own TMPDIR and an empty working directory; returns once
    the page answers (or fails with the app's output)."""
    tmp, cwd, log, port = root / "tmp", root / "cwd", root / "app.log", _free_port()
    tmp.mkdir()
    cwd.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("GRADIO_TEMP_DIR", None)  # so Gradio's copies go where the app puts them
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, str(APP), "--host", "127.0.0.1", "--port", str(port)], cwd=cwd,
                                   env=env, stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
    app = RunningApp(f"http://127.0.0.1:{port}/", process, tmp, cwd, log)
    deadline = time.monotonic() + STARTUP_SECONDS
    while process.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(app.url, timeout=5).close()
            return app
        except OSError:
            time.sleep(0.5)
    stop_app(app)
    pytest.fail(f"app.py did not answer at {app.url} within {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")


def stop_app(app: RunningApp) -> None:
    """SIGTERM, as a process manager stops it; killed if it does not end in time."""
    app.process.terminate()
    try:
        app.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        app.process.kill()
        app.process.wait()


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_browser()


@pytest.fixture(scope="module")
def app(chromium, tmp_path_factory) -> Iterator[RunningApp]:
    """The running app; once it is stopped, nothing of its staging folder may be left."""
    running = start_app(tmp_path_factory.mktemp("app"))
    yield running
    stop_app(running)
    assert list(running.tmp.glob("vistr-demo-*")) == [], "app.py left its staging folder behind"


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app):
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(app.url)
    yield page
    page.close()


@pytest.fixture(scope="module")
def segmenter():
    return pipeline("video-instance-segmentation", model=str(MODEL), trust_remote_code=True)


def pipeline_instances(segmenter, flips: list[str]) -> list[dict]:
    """Every instance the pipeline finds in the sample with these flips (threshold 0: all of them)."""
    return segmenter(str(SAMPLE), threshold=0.0, test_time_flips=flips)


def expected_rows(instances: list[dict], threshold: float) -> list[tuple[int, str, float, list[int]]]:
    """(id, label, score, frames its mask covers) of the instances scoring at least `threshold`, by id."""
    return [(i["id"], i["label_name"], i["score"], i["masks"].flatten(1).any(1).nonzero().flatten().tolist())
            for i in instances if i["score"] >= threshold]  # fmt: skip


def frames_of(spans: str) -> list[int]:
    """The table's frame column ("1–3, 6", numbered from 1) as frame indices [0, 1, 2, 5]."""
    frames = []
    for span in filter(None, spans.split(", ")):
        first, _, last = span.partition("–")
        frames += range(int(first) - 1, int(last or first))
    return frames


def shown_rows(page) -> list[tuple[int, str, float, list[int]]]:
    """The instance table as (id, label, score, frames), in the page's order."""
    rows = page.locator("#instances [role=row]").filter(has=page.locator("[role=gridcell]"))
    cells = [row.locator("[role=gridcell]").all_inner_texts() for row in rows.all()]
    return [(int(id_), label, float(score), frames_of(spans)) for id_, label, score, spans in cells]


def wait_for_file(page, name: str) -> None:
    """Until the file box holds `name` (uploaded, or the example copied in)."""
    page.locator(f'#video [aria-label="{name}"]').wait_for()


def upload(page, video: Path) -> None:
    page.locator("#video input[type=file]").set_input_files(video)
    wait_for_file(page, video.name)


def segment(page) -> list[tuple[int, str, float, list[int]]]:
    """Press Segment, wait for the overlay video and the filled table; returns the table."""
    page.click("#segment")
    page.locator("#overlay video").wait_for()
    page.wait_for_function("document.querySelector('#instances [role=gridcell]')?.innerText.trim()")
    return shown_rows(page)


def assert_rows_match(shown: list[tuple], expected: list[tuple]) -> None:
    """The same instances, labels and frames; scores as the table rounds them; best first."""
    assert expected, "the chosen settings must find instances, or the comparison proves nothing"
    assert [row[2] for row in shown] == sorted((row[2] for row in shown), reverse=True)
    assert [(i, label, frames) for i, label, _, frames in sorted(shown)] == [row[:2] + row[3:] for row in expected]
    assert [row[2] for row in sorted(shown)] == pytest.approx([row[2] for row in expected], abs=5e-4)


def overlay_size(page) -> list[int]:
    """The overlay's frame size once the browser has decoded its first frame."""
    return page.eval_on_selector("#overlay video", """video => new Promise(done => {
        const size = () => done([video.videoWidth, video.videoHeight]);
        video.readyState >= 2 ? size() : video.addEventListener("loadeddata", size, {once: true});
    })""")


def show_frame(page, frame: int, fps: float) -> None:
    """Pause the overlay on `frame`, for the screenshot."""
    page.eval_on_selector("#overlay video", """(video, time) => new Promise(done => {
        video.pause();
        video.addEventListener("seeked", done, {once: true});
        video.currentTime = time;
    })""", (frame + 0.5) / fps)  # fmt: skip


def save_screenshot(page, tmp_path: Path) -> None:
    path = tmp_path / "app_screenshot.png"
    page.screenshot(path=path, full_page=True)
    if os.environ.get("VISTR_UPDATE_SCREENSHOT") == "1":
        assert path.stat().st_size <= SCREENSHOT_MAX_BYTES, f"the screenshot is {path.stat().st_size} bytes"
        shutil.copyfile(path, SCREENSHOT)


def test_the_sample_with_default_settings_shows_what_the_pipeline_finds(page, app, segmenter, tmp_path):
    instances = pipeline_instances(segmenter, ALL_FLIPS)  # the bundled processor's flips, which the page starts with
    assert page.locator("#flips input[type=checkbox]").is_checked()
    assert page.locator("#threshold input[type=number]").input_value() == "0.5"
    upload(page, SAMPLE)
    assert_rows_match(segment(page), expected_rows(instances, 0.5))

    first_frame = next(iter_frames(SAMPLE))
    assert overlay_size(page) == [first_frame.width, first_frame.height]  # the browser plays the overlay
    link = page.locator("#results [data-testid=download-link]").get_attribute("href")
    served = Path(unquote(link.split("file=", 1)[1])).resolve()
    assert served.relative_to(app.tmp.resolve()).parts[0].startswith("vistr-demo-")  # inside the app's staging folder
    assert list(app.cwd.iterdir()) == []
    results = page.request.get(link).json()
    expected = VisTRVideoProcessor.to_youtube_vis_results([instances], [1])  # what `vistr segment --output` writes
    assert [{**r, "score": pytest.approx(r["score"], abs=1e-6)} for r in expected] == results

    rows = expected_rows(instances, 0.5)
    busiest = max(range(len(instances[0]["masks"])), key=lambda frame: sum(frame in frames for *_, frames in rows))
    show_frame(page, busiest, video_fps(SAMPLE))
    save_screenshot(page, tmp_path)


def test_the_offered_sample_with_other_threshold_and_flips(page, segmenter):
    one_view = expected_rows(pipeline_instances(segmenter, []), 0.3)
    assert one_view != expected_rows(pipeline_instances(segmenter, ALL_FLIPS), 0.5)  # else the controls go untested
    page.get_by_role("button", name=SAMPLE.name).click()  # the example under the file box
    wait_for_file(page, SAMPLE.name)
    page.locator("#threshold input[type=number]").fill("0.3")
    page.locator("#threshold input[type=number]").press("Enter")
    page.locator("#flips input[type=checkbox]").uncheck()
    assert_rows_match(segment(page), one_view)


def test_a_text_file_named_mp4_gets_one_line(page, app, tmp_path):
    bad = tmp_path / "not-a-video.mp4"
    bad.write_text("this is text, not a video\n")
    upload(page, bad)
    page.click("#segment")
    messages = page.locator("[data-testid=toast-text]")
    messages.first.wait_for()
    texts = messages.all_inner_texts()
    assert len(texts) == 1, texts
    assert texts[0].startswith(f"{bad.name}: ") and "\n" not in texts[0] and str(app.tmp) not in texts[0], texts[0]
    assert "Traceback" not in page.content()
    assert page.locator("#overlay video").count() == 0


def test_without_gradio_it_names_the_extra_to_install(tmp_path):
    """Runs without the browser: app.py with gradio made unimportable."""
    script = (f"import runpy, sys; sys.modules['gradio'] = None; sys.argv = ['app.py']; "
              f"runpy.run_path({str(APP)!r}, run_name='__main__')")  # fmt: skip
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and 'pip install -e ".[demo]"' in done.stderr, done.stderr
    assert list(tmp_path.glob("vistr-demo-*")) == []  # the staging folder went with it
