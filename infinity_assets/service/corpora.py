"""The corpora a service answers for: each reached by its root, its queries embedded with its indexes' models.

A corpus here is what ``infinity-assets serve --corpus NAME=ROOT`` names: a root (a local folder or
``s3://bucket/prefix`` holding ``raw/``, ``embeddings/`` and ``index/``), its open index readers, and how its
queries are embedded (:class:`~infinity_assets.settings.QuerySettings`: the Infinity server from the
environment or ``--url``; the model each index records, unless pinned). Without ``--corpus`` the service
answers for one corpus named ``default`` at ``$INFINITY_ASSETS_ROOT``, whose model ``$INFINITY_MODEL`` /
``$INFINITY_IMAGE_MODEL`` may pin, as earlier versions did.

Example::

    corpora = corpora_from_env({"docs": "s3://demo/docs", "pages": "s3://demo/pages"})
    app = create_app(corpora)
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from infinity_assets import settings
from infinity_assets.corpus import NAME_PATTERN, CorpusSettingsError
from infinity_assets.index import SearchSettings
from infinity_assets.index.local_copy import directory_from_env, originals_from_env
from infinity_assets.service.pages import OpenReaders
from infinity_assets.storage.documents import DocumentStore, DocumentStoreError, PdfSettings
from infinity_assets.storage.modality import MODALITIES

#: The name of the corpus served when no ``--corpus`` is given.
DEFAULT_CORPUS = "default"


class UnknownCorpus(LookupError):
    """A request names a corpus this service does not serve (a 404 listing the ones it does)."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no corpus {name[:80]!r} here: this service serves {', '.join(map(repr, known))} "
                         "(GET /corpora lists them with their indexes); pass one as ?corpus=<name>")
        self.known = known


@dataclass
class ServedCorpus:
    """One corpus of the service: its ``name``, its ``store`` (the root), how each modality's queries are
    embedded (``queries``), the candidates its staged search keeps (``search``), where its readers keep their
    local copy of stage 3's column (``local_copy``, None: none; :mod:`infinity_assets.index.local_copy`),
    whether that copy holds the rerank's rows too (``copy_originals``: True, False or ``"auto"``,
    :class:`~infinity_assets.index.IndexReader`), and its index readers, kept open
    across requests."""

    name: str
    store: DocumentStore
    queries: dict[str, settings.QuerySettings]
    search: SearchSettings = field(default_factory=SearchSettings)
    local_copy: str | None = None
    copy_originals: bool | str = "auto"
    readers: OpenReaders = field(init=False)

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise CorpusSettingsError(f"corpus name {self.name!r}: lowercase letters, digits and _, starting "
                                      "with a letter (as in the component's name), e.g. docs")
        missing = [m for m in MODALITIES if m not in self.queries]
        if missing:
            raise CorpusSettingsError(f"corpus {self.name!r} has no query settings for {', '.join(missing)}")
        self.readers = OpenReaders(self.store, self.local_copy, self.copy_originals)


def parse_corpus_option(value: str) -> tuple[str, str]:
    """``NAME=ROOT`` (the ``--corpus`` option) as ``(name, root)``; ``ValueError`` showing the form."""
    name, sep, root = value.partition("=")
    name, root = name.strip(), root.strip()
    if not sep or not name or not root:
        raise ValueError(f"--corpus {value!r}: write NAME=ROOT, e.g. --corpus docs=s3://bucket/docs")
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"--corpus {value!r}: the name {name!r} must be lowercase letters, digits and _, "
                         "starting with a letter (as the component's name), e.g. docs")
    return name, root


def corpora_from_env(roots: Mapping[str, str] | None = None, *, url: str | None = None) -> list[ServedCorpus]:
    """The corpora of ``roots`` (``{name: root}``, in order), or the ``default`` corpus at
    ``$INFINITY_ASSETS_ROOT`` when ``roots`` is empty.

    S3 credentials (``AWS_*``), the Infinity server (``url``, else ``$INFINITY_API_URL`` /
    ``$INFINITY_IMAGE_API_URL``) and its API key come from the environment for every corpus. A named corpus's
    queries use the model its index records; the ``default`` corpus's may be pinned by ``$INFINITY_MODEL`` /
    ``$INFINITY_IMAGE_MODEL``. The staged search keeps the candidates of ``INFINITY_ASSETS_SEARCH_*``, its
    readers their local copies under ``$INFINITY_ASSETS_INDEX_LOCAL_COPY`` (with the rerank's rows when
    ``$INFINITY_ASSETS_INDEX_LOCAL_COPY_ORIGINALS`` is on). PDF
    pages are drawn as their artifacts record they were embedded (``INFINITY_PDF_*`` for artifacts from before
    that was recorded). Raises ``ValueError`` naming the
    corpus and the setting that is wrong (a bad root, a variable that does not parse).
    """
    named = dict(roots or {})
    env_corpus = not named
    if env_corpus:
        named = {DEFAULT_CORPUS: settings.store_settings()["root"]}
    pdf = PdfSettings.from_env()
    search = SearchSettings.from_env()
    local_copy, copy_originals = directory_from_env(), originals_from_env()
    corpora = []
    for name, root in named.items():
        try:
            store = settings.store_from_env(root=root).build_store(pdf)
            queries = {m: settings.query_settings_from_env(m, url=url, env_model=env_corpus)
                       for m in MODALITIES}
            corpora.append(ServedCorpus(name, store, queries, search, local_copy, copy_originals))
        except (ValueError, DocumentStoreError) as exc:
            where = "$INFINITY_ASSETS_ROOT" if env_corpus else f"--corpus {name}={root}"
            raise ValueError(f"corpus {name!r} ({where}): {exc}") from None
    return corpora
