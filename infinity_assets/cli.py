"""The ``infinity-assets`` console script: search a corpus's index, or serve the search API and page viewer.

* ``infinity-assets search "QUERY" [--root s3://bucket/corpus] [--modality text|images] [--k 5] [--json]
  [--url URL] [--model NAME]``: one corpus, reached by its root (default ``$INFINITY_ASSETS_ROOT``).
* ``infinity-assets serve [--corpus NAME=ROOT ...] [--url URL] [--host 127.0.0.1] [--port 8080]``: the
  service (:mod:`infinity_assets.service`) over several corpora, or the ``default`` one at
  ``$INFINITY_ASSETS_ROOT``.

A corpus's index records the model and hidden_dim it was built with, so queries are embedded with that model
unless ``--model`` or ``$INFINITY_MODEL`` (``$INFINITY_IMAGE_MODEL`` first for ``--modality images``) names
one (a different one is refused, saying so); ``serve --corpus`` always uses each index's model. The Infinity
server (``--url``, else ``$INFINITY_API_URL`` / ``$INFINITY_IMAGE_API_URL``), its API key and client options
(``INFINITY_*``) and the S3 credentials (``AWS_*``) come from the environment, as for the Dagster resources.
The query is embedded with :meth:`InfinityEmbeddings.embed_query` and searched in the LanceDB index
(:mod:`infinity_assets.index`): the staged search by default (candidates per stage from
``INFINITY_ASSETS_SEARCH_*``), every vector with ``--exact``; ``--verbose`` prints the stages' timings on
stderr.
Exit codes: 0 results printed, 1 the index cannot answer or a setting is wrong (one line on stderr), 2 usage.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from infinity_assets import settings
from infinity_assets.client.errors import InfinityError
from infinity_assets.index import (
    Hit,
    IndexReader,
    SearchIndexError,
    SearchResult,
    SearchSettings,
    search_text_timed,
)
from infinity_assets.storage.documents import DocumentStoreError, PdfSettings


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``infinity-assets``."""
    parser = argparse.ArgumentParser(prog="infinity-assets", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser("search", help="search the index with a text query")
    search.add_argument("query", help="the question or keywords")
    search.add_argument("--root", help="the corpus: its folder or s3://bucket/prefix, holding index/ "
                        "(default $INFINITY_ASSETS_ROOT, else ./.data)")
    search.add_argument("--url", help="the Infinity server that embeds the query (default $INFINITY_API_URL, "
                        "$INFINITY_IMAGE_API_URL first for images)")
    search.add_argument("--model", help="the query model (default $INFINITY_MODEL / $INFINITY_IMAGE_MODEL if "
                        "set, else the model the index records); it must be the index's")
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
    serve.add_argument("--corpus", action="append", type=_corpus_option, metavar="NAME=ROOT", default=[],
                       help="a corpus to serve, by name and root (folder or s3://bucket/prefix); repeat for "
                       "several, the first is the default; queries use each index's model (default: one "
                       "corpus 'default' at $INFINITY_ASSETS_ROOT)")
    serve.add_argument("--url", help="the Infinity server that embeds queries, for every corpus (default "
                       "$INFINITY_API_URL, $INFINITY_IMAGE_API_URL first for images)")
    return parser


def _corpus_option(value: str) -> tuple[str, str]:
    from infinity_assets.service.corpora import parse_corpus_option  # the service: only for serve

    try:
        return parse_corpus_option(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--corpus {value!r}: ")) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args.host, args.port, args.corpus, args.url)
    if args.k < 1:
        print("infinity-assets: --k must be at least 1", file=sys.stderr)
        return 2
    os.environ.setdefault("LANCE_LOG", "error")  # Lance's Rust warnings are for developers, not this output

    try:
        store = settings.store_from_env(root=args.root).build_store(PdfSettings.from_env())
        queries = settings.query_settings_from_env(args.modality, url=args.url, model=args.model)
        reader = IndexReader(store, args.modality)
        with queries.for_index(reader.model, reader.hidden_dim).build_client() as client:
            result = search_text_timed(store, client, args.query, args.modality, args.k, exact=args.exact,
                                       settings=SearchSettings.from_env(), reader=reader)
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


def _serve(host: str, port: int, corpora: list[tuple[str, str]], url: str | None) -> int:
    """``infinity-assets serve``: runs until interrupted; a bad setting is one line on stderr and exit 1."""
    from infinity_assets.service import serve  # Starlette and uvicorn: only for this command

    names = [name for name, _ in corpora]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        print(f"infinity-assets: --corpus {', '.join(twice)} is given twice: give each corpus its own name",
              file=sys.stderr)
        return 2
    try:
        serve(host, port, corpora=dict(corpora) or None, url=url)
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
