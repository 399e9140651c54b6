"""Corpora of the ``index`` benchmark: synthetic structured pages, a needle set, real texlive pages; cached.

Everything lives under ``.cache/bench/`` (gitignored) and is made once; a run only reads it.

**(c) Synthetic ColPali-sized pages** (:class:`SyntheticPages`): 1,031 unit vectors of 128-d per page, made
from a seed and the page id alone, so any page can be regenerated on demand and 100,000 pages (53 GB of
float32) never have to be stored. Pages share structure as real pages do:

* 4,096 topics, each with a vocabulary of 64 "words" (unit vectors at cosine ~0.7 of the topic centre);
  topic popularity is Zipf-like (a few topics are on many pages);
* a page mixes 3-8 topics (Dirichlet weights); 60 % of its vectors are words of its topics (Zipf within a
  topic), 36 % are one of 32 shared "background" vectors (blank margins and furniture: every page has them),
  and 16 vectors are its own rare directions (the page-specific content a query can single out); every token
  is its word plus context noise (cosine ~0.93 to the word).

Known-item queries (:func:`synthetic_queries`): a page chosen at random, 18 of its topic tokens and 2 of its
rare tokens, each with query noise (cosine ~0.93): 20 query vectors, like a 20-token text query about that
page. Exact ground truth (:func:`exact_scores`): the float32 MaxSim of every query against every page,
computed once per query set in chunks of 1,000 pages and cached as ``.npy``, so every prefix (10,000,
20,000 pages) has its exact top-k.

**Needle in a haystack** (:func:`needle_corpus`): pages that are near-duplicates of 8 templates (each
token moved by small noise); each of the first ``needles`` pages alone holds a rare phrase (6 vectors in no
other page); its query is 14 tokens of its template (shared by thousands of pages) plus its rare phrase.

**(a) Real pages** (:func:`texlive_corpus`): Debian's ``texlive-latex-base-doc`` (``apt-get download``,
``dpkg-deb -x``; 269 PDFs, 8,002 pages), page texts by pypdfium2, embedded by the real CPU Infinity server
(``minilm-colbert-128``; the model reads the first 256 tokens of a page). Known-item queries: a sentence of
8-20 words lying inside the embedded part of a page, embedded as a query; the page is the known item.
MiniLM's vectors are not unit length and the index scores cosine MaxSim, so the corpus hands out unit vectors.
"""
from __future__ import annotations

import glob
import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench"
DIM, PAGE_VECTORS = 128, 1031
QUERY_VECTORS = 20


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float32, copy=False)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


@dataclass(frozen=True)
class KnownItem:
    """A query and the page it was drawn from."""

    page: int
    vectors: np.ndarray


@dataclass(frozen=True)
class TokenMix:
    """How a synthetic page is made: the share of background tokens and how many shared background vectors
    there are, how tight a topic's words are, the context noise and the rare tokens per page."""

    name: str
    background_share: float = 0.36
    backgrounds: int = 32
    background_noise: float = 0.03
    word_spread: float = 0.09
    context_noise: float = 0.03
    rare: int = 16


#: (A) few near-duplicate background patches, tight topics: the tokens pool well (the first benchmark's data).
TIGHT = TokenMix("tight")
#: (B) many distinct background patches with more noise, loose topics, fewer rare tokens: tokens pool badly.
LOOSE = TokenMix("loose", background_share=0.55, backgrounds=512, background_noise=0.08, word_spread=0.15,
                 context_noise=0.06, rare=8)


class SyntheticPages:
    """Structured ColPali-sized pages (see the module docstring); ``page(i)`` is the same on every call.

    Example::

        corpus = SyntheticPages()
        vectors = corpus.page(12345)          # (1031, 128) float32, unit rows
    """

    TOPICS, WORDS = 4096, 64

    def __init__(self, seed: int = 20, mix: TokenMix = TIGHT) -> None:
        self.seed, self.mix = seed, mix
        self.BACKGROUNDS, self.RARE = mix.backgrounds, mix.rare
        self.name = f"synthetic-{seed}" if mix == TIGHT else f"synthetic-{seed}-{mix.name}"
        rng = np.random.default_rng([seed, 0])
        self.topics = _unit(rng.standard_normal((self.TOPICS, DIM)))
        # word = topic + noise of std word_spread per coordinate (0.09: cosine ~0.66 to the topic centre)
        self.words = _unit(self.topics[:, None, :]
                           + mix.word_spread * rng.standard_normal((self.TOPICS, self.WORDS, DIM)))
        self.backgrounds = _unit(rng.standard_normal((self.BACKGROUNDS, DIM)))
        popularity = 1.0 / np.arange(1, self.TOPICS + 1) ** 0.8
        self.topic_p = rng.permutation(popularity / popularity.sum())
        word_p = 1.0 / np.arange(1, self.WORDS + 1)
        self.word_cdf = np.cumsum(word_p / word_p.sum())

    def _parts(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(topic-word tokens, background tokens, rare tokens) of page ``i``, before context noise."""
        mix = self.mix
        rng = np.random.default_rng([self.seed, 1, i])
        k = int(rng.integers(3, 9))
        topics = rng.choice(self.TOPICS, size=k, replace=False, p=self.topic_p)
        n_background = int(mix.background_share * PAGE_VECTORS)
        n_topic = PAGE_VECTORS - n_background - self.RARE
        topic_of = topics[rng.choice(k, size=n_topic, p=rng.dirichlet(np.ones(k)))]
        word_of = np.minimum(np.searchsorted(self.word_cdf, rng.random(n_topic)), self.WORDS - 1)
        topic_tokens = self.words[topic_of, word_of]
        background = self.backgrounds[rng.integers(self.BACKGROUNDS, size=n_background)]
        rare = _unit(rng.standard_normal((self.RARE, DIM)))
        noise = rng.standard_normal((PAGE_VECTORS, DIM)).astype(np.float32)  # context: cosine ~0.94 at 0.03
        noise[:n_topic] *= mix.context_noise
        noise[n_topic:n_topic + n_background] *= mix.background_noise
        noise[n_topic + n_background:] *= mix.context_noise
        return (_unit(topic_tokens + noise[:n_topic]), _unit(background + noise[n_topic:n_topic + n_background]),
                _unit(rare + noise[n_topic + n_background:]))

    def page(self, i: int) -> np.ndarray:
        """The ``(1031, 128)`` float32 unit vectors of page ``i``."""
        return np.concatenate(self._parts(i))

    def pages(self, start: int, stop: int) -> np.ndarray:
        """Pages ``start..stop-1`` stacked, ``(stop - start, 1031, 128)`` float32."""
        out = np.empty((stop - start, PAGE_VECTORS, DIM), np.float32)
        for n, i in enumerate(range(start, stop)):
            out[n] = self.page(i)
        return out

    def query(self, page: int, rng: np.random.Generator) -> np.ndarray:
        """A known-item query of page ``page``: 18 of its topic tokens and 2 of its rare ones, with noise."""
        topic, _, rare = self._parts(page)
        picked = np.concatenate([topic[rng.choice(len(topic), QUERY_VECTORS - 2, replace=False)],
                                 rare[rng.choice(len(rare), 2, replace=False)]])
        return _unit(picked + 0.03 * rng.standard_normal(picked.shape).astype(np.float32))


def page_cache(corpus: SyntheticPages, n_pages: int, workers: int = 2) -> np.memmap:
    """Pages ``0..n_pages-1`` of ``corpus`` as a read-only ``(n_pages, 1031, 128)`` float16 memory map under
    ``.cache/bench/pages/``, generated once (``workers`` processes, each filling its own range)."""
    folder = CACHE / "pages"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{corpus.name}-{n_pages}.f16"
    done = path.with_suffix(".done")
    shape = (n_pages, PAGE_VECTORS, DIM)
    if not done.exists():
        started = time.monotonic()
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape).flush()
        step = -(-n_pages // workers)
        children = [subprocess.Popen([sys.executable, "-m", "benchmarks.corpora", "fill", str(path), str(corpus.seed),
                                      corpus.mix.name, str(a), str(min(n_pages, a + step))], cwd=REPO)
                    for a in range(0, n_pages, step)]
        if any(child.wait() != 0 for child in children):
            raise RuntimeError(f"generating {path} failed")
        done.write_text(json.dumps({"seconds": time.monotonic() - started, "workers": workers}))
    return np.load(path, mmap_mode="r")


MIXES = {TIGHT.name: TIGHT, LOOSE.name: LOOSE}


def _fill(path: str, seed: int, mix: str, start: int, stop: int) -> None:
    corpus = SyntheticPages(seed, MIXES[mix])
    out = np.load(path, mmap_mode="r+")
    for block in range(start, stop, 100):
        end = min(stop, block + 100)
        out[block:end] = corpus.pages(block, end).astype(np.float16)
    out.flush()


def doc_id(page: int) -> str:
    """The doc_id of a synthetic page."""
    return f"page-{page:06d}"


def synthetic_queries(corpus: SyntheticPages, n_pages: int, count: int = 200, seed: int = 7) -> list[KnownItem]:
    """``count`` known-item queries over pages ``0..n_pages-1`` (deterministic)."""
    rng = np.random.default_rng([seed, n_pages])
    pages = rng.choice(n_pages, size=count, replace=False)
    return [KnownItem(int(p), corpus.query(int(p), rng)) for p in pages]


def _queries_key(queries: list[KnownItem]) -> str:
    digest = hashlib.sha256()
    for item in queries:
        digest.update(np.ascontiguousarray(item.vectors, np.float32).tobytes())
    return digest.hexdigest()[:16]


GT_CHUNK = 1000


def exact_scores(page_source: PageSource, queries: list[KnownItem], n_pages: int, log: bool = True,
                 start_chunk: int = 0, stop_chunk: int | None = None) -> tuple[np.ndarray, float]:
    """Exact float32 MaxSim of every query against pages ``0..n_pages-1``: ``(n_queries, n_pages)``, and the
    CPU seconds this call spent on chunks not yet cached (cached per 1,000 pages under ``.cache/bench``).
    ``start_chunk`` / ``stop_chunk``: only those chunks (several processes fill one cache at once)."""
    folder = CACHE / "ground-truth" / f"{page_source.name}-{_queries_key(queries)}"
    folder.mkdir(parents=True, exist_ok=True)
    stacked = np.concatenate([q.vectors for q in queries])  # (Q*20, 128)
    lengths = [len(q.vectors) for q in queries]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    chunks, spent = [], 0.0
    for start in list(range(0, n_pages, GT_CHUNK))[start_chunk:stop_chunk]:
        stop = min(n_pages, start + GT_CHUNK)
        path = folder / f"{start:07d}-{stop:07d}.npy"
        if not path.exists():
            began = time.process_time()
            scores = np.empty((len(queries), stop - start), np.float32)
            for sub in range(start, stop, 16):
                end = min(stop, sub + 16)
                docs = list(page_source.pages(sub, end))  # pages may have different lengths (real ones do)
                bounds = np.concatenate([[0], np.cumsum([len(d) for d in docs])[:-1]])
                sims = stacked @ np.concatenate(docs).T  # (Q*20, vectors of these pages)
                best = np.maximum.reduceat(sims, bounds, axis=1)  # (Q*20, n)
                scores[:, sub - start:end - start] = np.add.reduceat(best, starts, axis=0)
            temporary = path.with_suffix(".tmp.npy")
            np.save(temporary, scores)
            temporary.rename(path)
            path.with_suffix(".cpu").write_text(f"{time.process_time() - began:.1f}")
            spent += time.process_time() - began
            if log:
                print(f"    ground truth {page_source.name} pages {start}-{stop}: "
                      f"{time.process_time() - began:.0f} s CPU", flush=True)
        chunks.append(np.load(path))
    return np.concatenate(chunks, axis=1), spent


def tied_top_k(scores: np.ndarray, k: int, tolerance: float = 1e-5) -> list[np.ndarray]:
    """:func:`top_k` of each row followed by every other column whose score ties the ``k``-th (within
    ``tolerance``): with duplicate pages (real PDFs repeat pages) the exact top ``k`` is not unique, and any
    of the tied pages is an exact answer."""
    best = top_k(scores, k)
    out = []
    for row, chosen in zip(scores, best):
        tied = np.flatnonzero(row >= row[chosen[-1]] - tolerance)
        out.append(np.concatenate([chosen, np.setdiff1d(tied, chosen)]))
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best columns of each row, best first."""
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
    return np.take_along_axis(best, order, axis=1)


class PageSource:
    """What :func:`exact_scores` needs: a name (the cache key) and ``pages(start, stop)``."""

    name: str

    def pages(self, start: int, stop: int) -> np.ndarray:  # pragma: no cover - protocol
        raise NotImplementedError


class SyntheticSource(PageSource):
    """A :class:`SyntheticPages` as a :class:`PageSource`; with ``cached`` pages, the pages as the index keeps
    them (rounded to float16): read from :func:`page_cache` when that was generated (``page_cache(corpus,
    cached)``: 26 GB at 100,000 pages), else generated and rounded (the same values, no disk)."""

    def __init__(self, corpus: SyntheticPages, cached: int = 0) -> None:
        self.corpus, self.name, self.rounded = corpus, corpus.name + ("-f16" if cached else ""), bool(cached)
        path = CACHE / "pages" / f"{corpus.name}-{cached}.f16"
        self.cache = np.load(path, mmap_mode="r") if cached and path.with_suffix(".done").exists() else None

    def pages(self, start: int, stop: int) -> np.ndarray:
        if self.cache is not None and stop <= len(self.cache):
            return np.asarray(self.cache[start:stop], np.float32)
        pages = self.corpus.pages(start, stop)
        return pages.astype(np.float16).astype(np.float32) if self.rounded else pages


# ----------------------------------------------------------------------------------------------- needles
class NeedlePages(PageSource):
    """Near-duplicates of 8 template pages; page ``i < needles`` alone holds a rare phrase (see the docstring)."""

    TEMPLATES, PHRASE = 8, 6

    def __init__(self, n_pages: int = 5000, needles: int = 200, seed: int = 31) -> None:
        self.n_pages, self.needles, self.seed = n_pages, needles, seed
        self.name = f"needle-{seed}-{n_pages}-{needles}"
        base = SyntheticPages(seed)
        self.templates = np.stack([base.page(t) for t in range(self.TEMPLATES)])

    def phrase(self, i: int) -> np.ndarray:
        """The rare phrase of needle page ``i`` (6 unit vectors in no other page)."""
        return _unit(np.random.default_rng([self.seed, 2, i]).standard_normal((self.PHRASE, DIM)))

    def page(self, i: int) -> np.ndarray:
        """Page ``i``: its template moved by small noise, with the phrase in place of 6 tokens if a needle."""
        rng = np.random.default_rng([self.seed, 1, i])
        vectors = _unit(self.templates[i % self.TEMPLATES]
                        + 0.03 * rng.standard_normal((PAGE_VECTORS, DIM)).astype(np.float32))
        if i < self.needles:
            vectors[rng.choice(PAGE_VECTORS, self.PHRASE, replace=False)] = self.phrase(i)
        return vectors

    def pages(self, start: int, stop: int) -> np.ndarray:
        return np.stack([self.page(i) for i in range(start, stop)])

    def queries(self) -> list[KnownItem]:
        """One query per needle: 14 tokens of its template and its phrase, with query noise."""
        out = []
        for i in range(self.needles):
            rng = np.random.default_rng([self.seed, 3, i])
            common = self.templates[i % self.TEMPLATES][rng.choice(PAGE_VECTORS, QUERY_VECTORS - self.PHRASE,
                                                                   replace=False)]
            picked = np.concatenate([common, self.phrase(i)])
            out.append(KnownItem(i, _unit(picked + 0.03 * rng.standard_normal(picked.shape).astype(np.float32))))
        return out


# ------------------------------------------------------------------------------------------ real pages
TEXTLIVE = CACHE / "texlive"
TEXT_MODEL = "minilm-colbert-128"
MAX_TOKENS = 256


@dataclass(frozen=True)
class RealCorpus(PageSource):
    """Real MiniLM token vectors of texlive pages, and their known-item sentence queries."""

    doc_ids: list[str]
    texts: list[str]
    vectors: list[np.ndarray]
    query_doc: list[int]
    query_text: list[str]
    queries: list[KnownItem]
    name: str = "texlive"

    def pages(self, start: int, stop: int) -> list[np.ndarray]:  # type: ignore[override]
        return self.vectors[start:stop]


def ensure_texlive() -> Path:
    """Download and unpack ``texlive-latex-base-doc`` under ``.cache/bench/texlive`` (apt-get download)."""
    if not any(TEXTLIVE.glob("usr/share/doc/**/*.pdf")):
        TEXTLIVE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "texlive-latex-base-doc"], cwd=TEXTLIVE.parent, check=True,
                       capture_output=True)
        (deb,) = sorted(TEXTLIVE.parent.glob("texlive-latex-base-doc_*.deb"))[-1:]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(TEXTLIVE)], check=True)
    return TEXTLIVE


def texlive_texts(per_pdf: int | None = None) -> list[tuple[str, str]]:
    """``(doc_id, text)`` of the pages (at least 30 words) of every PDF, in path order; ``per_pdf`` caps the
    pages taken from each PDF (its first ones)."""
    import pypdfium2 as pdfium

    out = []
    root = ensure_texlive()
    for path in sorted(glob.glob(str(root / "**" / "*.pdf"), recursive=True)):
        name = Path(path).relative_to(root).as_posix()
        document = pdfium.PdfDocument(path)
        try:
            taken = 0
            for number in range(len(document)):
                if per_pdf is not None and taken >= per_pdf:
                    break
                page = document[number]
                textpage = page.get_textpage()
                text = " ".join(textpage.get_text_range().split())
                textpage.close()
                page.close()
                if len(text.split()) >= 30:
                    out.append((f"{name}#page={number + 1}", text))
                    taken += 1
        finally:
            document.close()
    return out


def embedded_prefixes(texts: list[str]) -> list[str]:
    """The part of each text the model reads (its first 256 tokens), by the model's own tokenizer (run in
    the server's virtualenv, where ``tokenizers`` is installed)."""
    from infinity_assets_dev.infinity import models_dir, server_python

    script = ("import json,sys; from tokenizers import Tokenizer; t=Tokenizer.from_file(sys.argv[1]); "
              "texts=json.load(sys.stdin); out=[]\n"
              "for s in texts:\n e=t.encode(s); off=[o for o in e.offsets if o!=(0,0)]\n"
              f" out.append(off[min(len(off), {MAX_TOKENS - 2}) - 1][1] if off else 0)\n"
              "json.dump(out, sys.stdout)")
    done = subprocess.run([str(server_python()), "-c", script, str(models_dir() / TEXT_MODEL / "tokenizer.json")],
                          input=json.dumps(texts), capture_output=True, text=True, check=True)
    return [text[:end] for text, end in zip(texts, json.loads(done.stdout))]


def _sentence(text: str, rng: np.random.Generator) -> str | None:
    """A sentence of 8-20 words of ``text`` (a random one), or a 12-word span if the text has none."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text)]
    fitting = [s for s in sentences if 8 <= len(s.split()) <= 20]
    if fitting:
        return fitting[int(rng.integers(len(fitting)))]
    words = text.split()
    if len(words) < 12:
        return None
    start = int(rng.integers(len(words) - 11))
    return " ".join(words[start:start + 12])


def texlive_corpus(server_url: str | None = None, per_pdf: int | None = None, queries: int = 300,
                   name: str = "texlive") -> RealCorpus:
    """The real corpus, embedded once with the real server at ``server_url`` (one is started if None) and
    cached as Parquet under ``.cache/bench/texlive/<name>-*.parquet``."""
    pages_path = TEXTLIVE / f"{name}-pages-{TEXT_MODEL}.parquet"
    queries_path = TEXTLIVE / f"{name}-queries-{TEXT_MODEL}.parquet"
    if not (pages_path.exists() and queries_path.exists()):
        _embed_texlive(server_url, per_pdf, queries, pages_path, queries_path)
    pages = pq.read_table(pages_path)
    asked = pq.read_table(queries_path)
    # The index scores cosine MaxSim (MiniLM's vectors are not unit): every engine and the ground truth get
    # the unit vectors, so "exact" is the index's own exact search.
    vectors = [_unit(v) for v in _vectors_of(pages.column("embedding"))]
    query_vectors = [_unit(v) for v in _vectors_of(asked.column("embedding"))]
    query_doc = asked.column("page").to_pylist()
    return RealCorpus(pages.column("doc_id").to_pylist(), pages.column("text").to_pylist(), vectors, query_doc,
                      asked.column("query").to_pylist(),
                      [KnownItem(p, v) for p, v in zip(query_doc, query_vectors)], name=name)


def _vectors_of(column: pa.ChunkedArray) -> list[np.ndarray]:
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy()
    flat = array.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, DIM)
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(array))]


def _table(columns: dict[str, list], vectors: list[np.ndarray]) -> pa.Table:
    flat = pa.array(np.concatenate(vectors).reshape(-1), pa.float32())
    inner = pa.FixedSizeListArray.from_arrays(flat, DIM)
    offsets = pa.array(np.concatenate([[0], np.cumsum([len(v) for v in vectors])]).astype(np.int32))
    return pa.table({**columns, "embedding": pa.ListArray.from_arrays(offsets, inner)})


def _embed_texlive(server_url: str | None, per_pdf: int | None, count: int, pages_path: Path,
                   queries_path: Path) -> None:
    from contextlib import nullcontext

    from infinity_assets import InfinityEmbeddings
    from infinity_assets_dev.infinity import InfinityServer

    started = time.monotonic()
    pages = texlive_texts(per_pdf)
    doc_ids, texts = [p[0] for p in pages], [p[1] for p in pages]
    prefixes = embedded_prefixes(texts)
    rng = np.random.default_rng(11)
    asked: list[tuple[int, str]] = []
    for page in rng.permutation(len(pages)):
        sentence = _sentence(prefixes[page], rng)
        if sentence:
            asked.append((int(page), sentence))
        if len(asked) == count:
            break
    server = nullcontext(None) if server_url else InfinityServer([TEXT_MODEL])
    with server as running:
        url = server_url or running.url
        with InfinityEmbeddings(url=url, model_name=TEXT_MODEL, hidden_dim=DIM, embed_batch_size=16,
                                max_concurrency=2) as client:
            vectors = []
            for start in range(0, len(texts), 256):
                vectors += client.embed_documents_batch(texts[start:start + 256])
                print(f"    texlive embedded {len(vectors)}/{len(texts)} pages "
                      f"({time.monotonic() - started:.0f} s)", flush=True)
            query_vectors = [client.embed_query(text) for _, text in asked]
    pages_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_table({"doc_id": doc_ids, "text": texts}, vectors), pages_path)
    pq.write_table(_table({"page": [p for p, _ in asked], "query": [t for _, t in asked]}, query_vectors),
                   queries_path)


def iter_rows(source: PageSource, n_pages: int, ids: list[str] | None = None,
              chunk: int = 100) -> Iterator[tuple[str, np.ndarray]]:
    """``(doc_id, vectors)`` of pages ``0..n_pages-1``, generated ``chunk`` at a time."""
    for start in range(0, n_pages, chunk):
        block = source.pages(start, min(n_pages, start + chunk))
        for offset, vectors in enumerate(block):
            yield (ids[start + offset] if ids else doc_id(start + offset)), vectors


if __name__ == "__main__":
    if sys.argv[1] == "fill":
        _fill(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
