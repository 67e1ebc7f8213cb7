"""The captioning page (`fashioncap app`): its function through gradio_client, and the words it marks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from fashioncap.app import mark_caption, marked_phrases

PHRASES = {("dress",): "category", ("knee", "high", "boots"): "category", ("red",): "attribute",
           ("high",): "attribute"}  # fmt: skip


@pytest.fixture(scope="module")
def page_run(tmp_path_factory, tiny_model_dir, synthetic_dir) -> Path:
    """The tiny BLIP as a run trained on the synthetic set (its recipe names the data dir)."""
    run = tmp_path_factory.mktemp("app") / "run"
    shutil.copytree(tiny_model_dir, run)
    recipe = {"data": {"data_dir": str(synthetic_dir)}, "generation": {"num_beams": 2, "max_new_tokens": 6,
                                                                      "min_new_tokens": 2}}  # fmt: skip
    (run / "fashioncap_config.json").write_text(json.dumps(recipe))
    return run


@pytest.fixture(scope="module")
def florence2_page_run(tmp_path_factory, florence2_run) -> Path:
    """A Florence-2 adapter run (a trained run as `train` leaves it) with the page's generation settings."""
    run = tmp_path_factory.mktemp("app-florence2") / "run"
    shutil.copytree(florence2_run, run)
    recipe = json.loads((run / "fashioncap_config.json").read_text())
    recipe["generation"] = {"num_beams": 2, "max_new_tokens": 6, "min_new_tokens": 2}
    (run / "fashioncap_config.json").write_text(json.dumps(recipe))
    return run


def test_mark_caption_labels_the_longest_known_phrase_as_whole_words():
    segments = mark_caption("A Red dress with knee-high boots, reddish high", PHRASES)
    assert segments == [("A", None), ("Red", "attribute"), ("dress", "category"), ("with", None),
                        ("knee-high boots,", "category"), ("reddish", None), ("high", "attribute")]  # fmt: skip


def test_marked_phrases_come_from_the_runs_data(page_run, synthetic_dir):
    phrases = marked_phrases(page_run)
    categories = json.loads((synthetic_dir / "categories.json").read_text())
    assert all(phrases[tuple(form.split())] == "category" for forms in categories.values() for form in forms)
    assert "attribute" in phrases.values()
    assert marked_phrases(page_run.parent / "no-such-run") == {}


@pytest.mark.parametrize("run", ["page_run", "florence2_page_run"], ids=["blip", "florence2"])
def test_the_page_captions_uploads_through_gradio_client(run, synthetic_dir, tmp_path, capsys, request):
    from gradio_client import Client, handle_file

    from fashioncap.app import launch
    from fashioncap.cli import main

    photos = sorted((synthetic_dir / "images" / "test").iterdir())[:2]
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    page_run = request.getfixturevalue(run)  # a merged BLIP, a Florence-2 adapter run
    capsys.readouterr()  # what building it printed
    assert main(["caption", "--model-dir", str(page_run), *map(str, photos)]) == 0
    expected = [json.loads(line)["caption"] for line in capsys.readouterr().out.splitlines()]
    page, url = launch(str(page_run), block=False)
    try:
        client = Client(url, verbose=False)
        files = [handle_file(str(p)) for p in [*photos, notes, broken]]
        answer = client.predict(files, 2, 6, api_name="/caption")
    finally:
        page.close()
    items = answer.split("<li")[1:]
    assert len(items) == 4
    for item, caption in zip(items[:2], expected, strict=True):
        text = item.replace('<mark class="category">', "").replace('<mark class="attribute">', "")
        assert item.startswith(' class="caption"') and caption in text.replace("</mark>", "")
    assert 'class="problem"><b>notes.txt</b>: cannot caption it (not an image file)' in items[2]
    assert 'class="problem"><b>broken.png</b>' in items[3] and "Traceback" not in answer


def test_the_page_in_a_headless_browser(page_run, synthetic_dir, tmp_path, capsys):
    """Chromium uploads a photo and the caption appears. FASHIONCAP_SCREENSHOT=docs/app.png keeps the page's
    screenshot there (the README's); FASHIONCAP_APP_RUN shows another run than the tiny untrained one."""
    from headless_chromium import Chromium, find_chromium

    from fashioncap.app import launch
    from fashioncap.cli import main

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)")
    run = os.environ.get("FASHIONCAP_APP_RUN") or str(page_run)
    photos = sorted((synthetic_dir / "images" / "test").iterdir())[:2]
    assert main(["caption", "--model-dir", run, *map(str, photos)]) == 0
    expected = [json.loads(line)["caption"] for line in capsys.readouterr().out.splitlines()]
    page, url = launch(run, block=False)
    browser = Chromium(chromium, width=1100, height=620)
    try:
        browser.navigate(url)
        browser.wait_for("document.querySelector('#photos input[type=file]') !== null")
        browser.set_files("#photos input[type=file]", photos)
        names = " && ".join(
            f"document.querySelector('#photos').innerText.includes('{p.stem}')" for p in photos
        )
        browser.wait_for(names)
        browser.evaluate("document.querySelector('#caption-button').click()")
        shown = browser.wait_for(
            "document.querySelectorAll('#captions li.caption').length == 2 && "
            "document.querySelector('#captions').innerText"
        )
        browser.screenshot(tmp_path / "app.png")
    finally:
        browser.close()
        page.close()
    assert all(caption in " ".join(shown.split()) for caption in expected), shown
    assert (tmp_path / "app.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("FASHIONCAP_SCREENSHOT"):
        shutil.copy(tmp_path / "app.png", os.environ["FASHIONCAP_SCREENSHOT"])


def test_without_gradio_the_app_command_says_how_to_get_it(page_run, monkeypatch, capsys):
    import sys

    from fashioncap.cli import main

    monkeypatch.setitem(
        sys.modules, "gradio", None
    )  # as if not installed: `import gradio` raises ImportError
    assert main(["app", "--model-dir", str(page_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0 and err.startswith("fashioncap app: error:") and "pip install -e '.[app]'" in err
    )


def test_the_app_command_stays_local_and_prints_no_share_hint(page_run, monkeypatch, capsys):
    """GRADIO_SHARE=true must not open a tunnel (the page passes share=False), and Gradio's "set share=True in
    launch()" hint, which a command-line user cannot act on, is not printed."""
    import gradio
    from gradio import networking

    from fashioncap.cli import main

    tunnels = []
    monkeypatch.setenv("GRADIO_SHARE", "true")
    monkeypatch.setattr(
        networking, "setup_tunnel", lambda *a, **k: tunnels.append(k) or "https://x.gradio.live"
    )
    monkeypatch.setattr(gradio.Blocks, "block_thread", lambda page: page.close())  # serve, then stop at once
    assert main(["app", "--model-dir", str(page_run), "--max-file-size", "2"]) == 0
    out = capsys.readouterr().out
    assert not tunnels, "a public tunnel was opened"
    assert "share=True" not in out and "public URL" not in out
    assert "fashioncap app: serving http://127.0.0.1:" in out and "uploads up to 2 MB" in out


def test_an_upload_over_the_size_limit_is_refused(page_run, tmp_path):
    from gradio_client import Client, handle_file

    from fashioncap.app import launch

    small, large = tmp_path / "small.png", tmp_path / "large.png"
    small.write_bytes(b"\x89PNG" + bytes(1000))
    large.write_bytes(b"\x89PNG" + bytes(300_000))
    page, url = launch(str(page_run), block=False, max_file_size_mb=0.1)
    try:
        client = Client(url, verbose=False)
        assert "small.png" in client.predict([handle_file(str(small))], 1, 4, api_name="/caption")
        with pytest.raises(Exception, match="(?i)size"):
            client.predict([handle_file(str(large))], 1, 4, api_name="/caption")
    finally:
        page.close()
