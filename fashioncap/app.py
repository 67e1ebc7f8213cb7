"""The captioning page (`fashioncap app`): drop product photos, read each caption with the category and attribute
words it names marked. Gradio is an optional extra (`pip install -e '.[app]'`); the page works offline.

The words marked are the run's own vocabulary: the category names of its data dir's categories.json (or the
recipe's `category_names`) and the attributes of its training annotations, matched as whole normalised words,
longest phrase first. Every upload is captioned by `inference.caption_paths`, so a file that is not an image (or
is broken) gets its reason on the page, never a traceback.
"""

from __future__ import annotations

import html
import logging
import os
import tempfile
from pathlib import Path

from fashioncap import rundir
from fashioncap.errors import MissingDependencyError
from fashioncap.text import normalize_text

logger = logging.getLogger(__name__)

EXAMPLES = 4
MAX_BEAMS = 8
MAX_LENGTH = 80
DEFAULT_MAX_FILE_SIZE_MB = 10  # a product photo is a few MB at most; larger uploads are refused
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web font: nothing to fetch offline
STYLE = """
mark.category { background: #ffd166; padding: 0 .2em; border-radius: .2em; }
mark.attribute { background: #a0e7e5; padding: 0 .2em; border-radius: .2em; }
li.problem { color: #b00020; }
"""


def marked_phrases(model_dir: str | Path) -> dict[tuple[str, ...], str]:
    """{normalised phrase as words: "category" | "attribute"} from the run's data: what the page marks."""
    from fashioncap.data.coco import load_categories, read_categories

    data = ((rundir.run_config(model_dir) or {}).get("data")) or {}
    data_dir = Path(data.get("data_dir") or "")
    phrases: dict[tuple[str, ...], str] = {}
    train = rundir.read_json(data_dir / "annotations" / f"{data.get('train_split', 'train')}.json") or {}
    for annotation in train.get("annotations", []):
        for attribute in annotation.get("attributes") or []:
            phrases[tuple(normalize_text(attribute).split())] = "attribute"
    if data.get("category_names"):
        categories = read_categories(data["category_names"])
    elif (data_dir / "categories.json").is_file():
        categories = load_categories(data_dir)
    else:
        categories = {}
    for forms in categories.values():
        phrases.update({tuple(normalize_text(form).split()): "category" for form in forms})
    phrases.pop((), None)
    return phrases


def mark_caption(caption: str, phrases: dict[tuple[str, ...], str]) -> list[tuple[str, str | None]]:
    """The caption as (text, label) segments: each longest known phrase labelled, the words between not."""
    words = caption.split()
    keys = [normalize_text(w) for w in words]
    longest = max(map(len, phrases), default=0)
    segments: list[tuple[str, str | None]] = []
    i = 0
    while i < len(words):
        for n in range(min(longest, len(words) - i), 0, -1):
            label = phrases.get(tuple(k for key in keys[i : i + n] for k in key.split()))
            if label:
                segments.append((" ".join(words[i : i + n]), label))
                i += n
                break
        else:
            segments.append((words[i], None))
            i += 1
    return segments


def segments_html(segments: list[tuple[str, str | None]]) -> str:
    return " ".join(
        f'<mark class="{label}">{html.escape(text)}</mark>' if label else html.escape(text)
        for text, label in segments
    )


class Captioner:
    """A run loaded once for the page: its model and processor, generation settings and marked words."""

    def __init__(self, model_dir: str):
        from fashioncap.inference import generation_settings, load_captioner

        self.model, self.processor = load_captioner(model_dir)
        self.settings = generation_settings(model_dir)
        self.phrases = marked_phrases(model_dir)

    def caption_html(self, files, num_beams: int, max_new_tokens: int) -> str:
        """The page's answer for the uploaded files: one list item per file, in upload order, its caption marked or
        its problem."""
        from fashioncap.inference import caption_paths

        paths = [Path(f if isinstance(f, str | os.PathLike) else f.name) for f in files or []]
        if not paths:
            return "<p>Upload one or more product photos.</p>"
        max_new_tokens = int(max_new_tokens)
        settings = {
            "num_beams": int(num_beams),
            "max_new_tokens": max_new_tokens,
            "min_new_tokens": min(self.settings["min_new_tokens"], max_new_tokens),
        }
        items = []
        results = {path: (caption, problem) for path, caption, problem in
                   caption_paths(self.model, self.processor, paths, **settings)}  # fmt: skip
        for path in paths:  # in upload order (a problem is reported as soon as it is met)
            caption, problem = results[path]
            name = html.escape(path.name)
            if problem is not None:
                items.append(
                    f'<li class="problem"><b>{name}</b>: cannot caption it ({html.escape(problem)})</li>'
                )
            else:
                items.append(
                    f'<li class="caption"><b>{name}</b>: {segments_html(mark_caption(caption, self.phrases))}</li>'
                )
        legend = '<p><mark class="category">category</mark> <mark class="attribute">attribute</mark></p>'
        return f'<ol class="captions">{"".join(items)}</ol>{legend}'


def example_photos(folder: Path) -> list[Path]:
    """A few test images of the synthetic set, drawn offline into `folder`."""
    from fashioncap.data.synthetic import build_synthetic

    data = build_synthetic(folder / "synthetic", train=0, val=0, test=EXAMPLES, pretrain=0)
    return sorted((data / "images" / "test").iterdir())


def import_gradio():
    """Gradio, without its usage analytics (nothing leaves the machine), or a one-line way to get it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise MissingDependencyError(
            "the captioning page needs Gradio: pip install -e '.[app]' (from the fashioncap checkout)"
        ) from None
    return gradio


def build_page(captioner: Captioner, examples_dir: Path):
    """The Gradio page: photos in, beams and length as controls, the marked captions out (api name "caption")."""
    gr = import_gradio()
    with gr.Blocks(title="fashioncap") as page:
        gr.Markdown("# fashioncap\nDrop one or several product photos: each gets a caption, with the category "
                    "and attribute words it names marked.")  # fmt: skip
        with gr.Row():
            with gr.Column():
                photos = gr.File(file_count="multiple", label="Product photos", elem_id="photos")
                beams = gr.Slider(1, MAX_BEAMS, step=1, value=captioner.settings["num_beams"], label="Beams")
                length = gr.Slider(
                    1, MAX_LENGTH, step=1, value=captioner.settings["max_new_tokens"], label="Max new tokens"
                )
                button = gr.Button("Caption", variant="primary", elem_id="caption-button")
            with gr.Column():
                captions = gr.HTML(elem_id="captions")
        gr.Examples(
            [[[str(p)]] for p in example_photos(examples_dir)], inputs=[photos], label="Synthetic photos"
        )
        button.click(captioner.caption_html, [photos, beams, length], captions, api_name="caption")
    return page


def launch(
    model_dir: str,
    port: int | None = None,
    host: str = "127.0.0.1",
    block: bool = True,
    max_file_size_mb: float = DEFAULT_MAX_FILE_SIZE_MB,
):
    """Load the run, build the page and serve it; returns (page, local URL) when `block` is false (tests).

    The page stays local: `share=False` explicitly, so neither GRADIO_SHARE=true nor a hosted notebook opens a
    public tunnel; an upload over `max_file_size_mb` is refused. Gradio's own start-up lines are silenced (their
    "set share=True in launch()" is not something a command-line user can do): one line says where to go."""
    gr = import_gradio()
    captioner = Captioner(model_dir)
    examples_dir = Path(tempfile.mkdtemp(prefix="fashioncap-app-"))
    page = build_page(captioner, examples_dir)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])
    _, url, _ = page.launch(
        server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, share=False, theme=theme,
        css=STYLE, allowed_paths=[str(examples_dir)], footer_links=[], ssr_mode=False,
        max_file_size=int(max_file_size_mb * 1024 * 1024),
    )  # fmt: skip
    print(
        f"fashioncap app: serving {url} (uploads up to {max_file_size_mb:g} MB; Ctrl+C stops it)", flush=True
    )
    if block:
        page.block_thread()
    return page, url
