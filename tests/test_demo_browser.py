"""The demo in a real headless browser (Debian chromium driven by playwright): upload a clip through
the page's file input, press Analyze, and see the emotion and the motion picture appear; a file that
is not a video shows a readable error on the page."""

import os
import shutil
import socket
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"Debian chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")

TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    from deft_llm.demo import build_demo, launch_kwargs, make_examples

    examples = make_examples()
    demo = build_demo(max_new_tokens=24)
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                        quiet=True, ssr_mode=False, **launch_kwargs())
    yield demo, examples
    demo.close()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    demo, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(demo.local_url)
        page.locator("#run").wait_for(state="visible")
        yield page
        browser.close()


def test_upload_run_and_see_the_emotion_and_the_motion_picture(server, page, tmp_path):
    demo, examples = server
    clip = tmp_path / "my_clip.webm"       # an upload, not the example gallery
    shutil.copy(next(e.path for e in examples if e.emotion == "happiness"), clip)

    page.locator("#clip input[type=file]").set_input_files(str(clip))
    page.locator("#clip video").wait_for(state="attached")       # the upload finished
    page.get_by_label("none: the clip is already a face crop").check()
    page.locator("#run").click()

    emotion = page.locator("#emotion textarea")
    page.wait_for_function("() => document.querySelector('#emotion textarea').value.length > 0")
    assert emotion.input_value() in set(demo.deft_engine.id2label.values())
    picture = page.locator("#motion-picture img")
    picture.wait_for(state="visible")
    width = page.evaluate("() => document.querySelector('#motion-picture img').naturalWidth")
    assert width > 500                      # the three-panel flow / strain figure
    assert page.locator("#apex-frame img").is_visible()
    assert "AU evidence" in page.locator("#evidence").inner_text()
    assert "apex" in page.locator("#details").inner_text()


def test_a_file_that_is_not_a_video_shows_a_readable_error(server, page, tmp_path):
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video\n" * 50)
    page.reload()
    page.locator("#run").wait_for(state="visible")
    page.locator("#clip input[type=file]").set_input_files(str(notes))
    page.wait_for_timeout(500)
    page.locator("#run").click()
    message = page.get_by_text("notes.mp4: this file is not a video that can be read")
    message.first.wait_for(state="visible")
    assert "Traceback" not in page.content()
