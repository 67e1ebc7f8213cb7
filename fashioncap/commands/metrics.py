"""`fashioncap metrics install-spice`: fetch what SPICE needs (Stanford CoreNLP 3.6.0, a JavaScript engine)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "caption-metric tools: install-spice fetches the jars SPICE needs"
PROG = "fashioncap metrics install-spice"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="metrics_command", metavar="{install-spice}", required=True)
    install = sub.add_parser(
        "install-spice",
        help="download Stanford CoreNLP 3.6.0 (and Rhino on Java 15+) from Maven Central, verify, put in place",
    )
    add_install_spice_arguments(install)


def run(args: argparse.Namespace) -> int:
    return install_spice_command(args)


def add_install_spice_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lib-dir",
        type=Path,
        help="where to put the jars (default: $FASHIONCAP_SPICE_LIB, else pycocoevalcap's spice/lib: "
        "where SPICE looks)",
    )
    parser.add_argument(
        "--base-url",
        default="https://repo1.maven.org/maven2",
        help="Maven repository or mirror to fetch from (default: %(default)s)",
    )
    parser.add_argument(
        "--java-major",
        type=int,
        help="the Java version to install for (default: what `java -version` says); 15+ also gets Rhino",
    )
    parser.add_argument(
        "--retries", type=int, default=3, help="retries after a network error (default: %(default)s)"
    )


def install_spice_command(args: argparse.Namespace) -> int:
    from fashioncap.metrics import coco_caption
    from fashioncap.metrics.spice_install import (
        InstallError,
        detect_java_major,
        install_spice,
        required_artifacts,
    )

    spice_lib = coco_caption.spice_lib_dir()
    lib_dir = args.lib_dir or spice_lib
    java_major = args.java_major if args.java_major is not None else detect_java_major()
    try:
        install_spice(
            lib_dir,
            args.base_url,
            required_artifacts(java_major),
            retries=args.retries,
            progress=sys.stderr.isatty(),
            report=lambda result: print(result.describe(), flush=True),
        )
    except (InstallError, OSError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run it again to resume", file=sys.stderr)
        return 130
    if java_major is None:
        print(f"note: no Java found, so Rhino was fetched for Java 17. {coco_caption.JAVA_INSTALL_HINT}")
    if lib_dir.resolve() != spice_lib.resolve():
        print(
            f"note: SPICE looks in {spice_lib}; set {coco_caption.SPICE_LIB_ENV}={lib_dir} so it uses these jars"
        )
    return 0
