"""`fashioncap app --model-dir RUN [--port N]`: a captioning page in the browser (Gradio, `pip install -e .[app]`)."""

from __future__ import annotations

import argparse

HELP = "serve a captioning page for a run: upload product photos, read their captions (needs .[app])"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir", required=True, help="a trained run, a merged model dir, or a Hub model id"
    )
    parser.add_argument("--port", type=int, help="port to serve on (default: the first free one from 7860)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: this machine only; 0.0.0.0 for all)",
    )
    parser.add_argument(
        "--max-file-size",
        type=float,
        default=10,
        metavar="MB",
        help="largest upload accepted, in MB (default: 10); a larger file is refused by the page",
    )


def run(args: argparse.Namespace) -> int:
    from fashioncap.app import launch

    launch(args.model_dir, port=args.port, host=args.host, max_file_size_mb=args.max_file_size)
    return 0
