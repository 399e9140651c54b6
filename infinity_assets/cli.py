"""The ``infinity-assets`` console script: ``infinity-assets search "QUERY" [--modality text|images] [--k 5] [--json]``
and ``infinity-assets serve [--host 127.0.0.1] [--port 8080]`` (the search API and page viewer,
:mod:`infinity_assets.service`).

Settings come from the same environment variables as the Dagster resources: ``INFINITY_*`` (``INFINITY_IMAGE_*``
first for ``--modality images``), ``INFINITY_ASSETS_ROOT`` and ``AWS_*``. The query is embedded with
:meth:`InfinityEmbeddings.embed_query` and searched in the LanceDB index (:mod:`infinity_assets.index`): the
staged search by default (candidates per stage from ``INFINITY_ASSETS_SEARCH_*``), every vector with
``--exact``; ``--verbose`` prints the stages' timings on stderr.
Exit codes: 0 results printed, 1 the index cannot answer or a setting is wrong (one line on stderr), 2 usage.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from infinity_assets import settings
from infinity_assets.storage.documents import DocumentStoreError
from infinity_assets.client.errors import InfinityError
from infinity_assets.index import Hit, SearchIndexError, SearchResult, search_text_timed


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``infinity-assets``."""
    parser = argparse.ArgumentParser(prog="infinity-assets", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser("search", help="search the index with a text query")
    search.add_argument("query", help="the question or keywords")
    search.add_argument("--modality", choices=["text", "images"], default="text",
                        help="which index: text documents or page images (default text)")
    search.add_argument("--k", type=int, default=5, help="number of results (default 5)")
    search.add_argument("--json", action="store_true", help="one JSON object per result and line")
    search.add_argument("--exact", action="store_true",
                        help="exact search: every vector of the index scanned (the ground truth of the staged search)")
    search.add_argument("--verbose", action="store_true",
                        help="print the search stages' timings and candidates on stderr")
    serve = commands.add_parser("serve", help="serve the search API and the page viewer over HTTP")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                       "machine only; set INFINITY_ASSETS_SERVE_API_KEY before opening it wider)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args.host, args.port)
    if args.k < 1:
        print("infinity-assets: --k must be at least 1", file=sys.stderr)
        return 2
    os.environ.setdefault("LANCE_LOG", "error")  # Lance's Rust warnings are for developers, not this output

    try:
        store = settings.build_store()
        with settings.build_client(settings.env_prefix_for(args.modality)) as client:
            result = search_text_timed(store, client, args.query, args.modality, args.k, exact=args.exact)
    except (SearchIndexError, InfinityError, DocumentStoreError, ValueError) as exc:
        print(f"infinity-assets: {exc}", file=sys.stderr)
        return 1
    for rank, hit in enumerate(result.hits, 1):
        print(json.dumps(hit.to_json(), ensure_ascii=False) if args.json else _line(rank, hit))
    if args.verbose:
        print(_stages(result), file=sys.stderr)
    return 0


def _stages(result: SearchResult) -> str:
    """One line: milliseconds per stage and the candidates each kept."""
    timings = "  ".join(f"{stage} {seconds * 1000:.1f} ms" for stage, seconds in result.timings.items())
    kept = ", ".join(f"{stage} {count}" for stage, count in result.candidates.items())
    read = f"; {result.bytes_read / 1e6:.2f} MB read" if result.bytes_read is not None else ""
    return f"search stages: {timings}; candidates kept: {kept}{read}"


def _serve(host: str, port: int) -> int:
    """``infinity-assets serve``: runs until interrupted; a bad setting is one line on stderr and exit 1."""
    from infinity_assets.service import serve  # Starlette and uvicorn: only for this command

    try:
        serve(host, port)
    except (DocumentStoreError, ValueError) as exc:
        print(f"infinity-assets: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _line(rank: int, hit: Hit) -> str:
    page = f" page {hit.page}" if hit.page is not None else ""
    snippet = f"\n     {hit.snippet}" if hit.snippet else ""
    return f"{rank:2}. {hit.score:8.4f}  {hit.doc_id}{page}  ({hit.source_uri}){snippet}"


if __name__ == "__main__":
    sys.exit(main())
