"""InfinityEmbeddings against an in-process, protocol-faithful fake server that can misbehave.

The real-server proof lives in test_conformance_real_server.py.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import random

import numpy as np
import pytest
from PIL import Image

from infinity_assets import (
    BatchEmbeddingError,
    InfinityAuthenticationError,
    InfinityBadRequestError,
    InfinityConnectionError,
    InfinityEmbeddings,
    InfinityResponseError,
    InfinityServerError,
    InvalidInputError,
)
from infinity_assets.client import wire
from infinity_assets.testing import fake_infinity as fi
from infinity_assets.testing.fake_infinity import FakeInfinity, vectors_for

ENCODINGS = ["base64", "float"]


def png_bytes(size: tuple[int, int] = (8, 8), color: tuple[int, int, int] = (10, 200, 30), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def make_client(fake: FakeInfinity, **options) -> InfinityEmbeddings:
    client = InfinityEmbeddings(url="http://infinity.test", model_name=fake.model, hidden_dim=fake.hidden_dim,
                                transport=fake.transport(), **options)
    client._sleep = lambda seconds: sleeps.append(seconds)
    client._asleep = _no_asleep
    return client


sleeps: list[float] = []


async def _no_asleep(seconds: float) -> None:
    sleeps.append(seconds)


def expected_text(text: str, dim: int = 128) -> np.ndarray:
    return vectors_for(text, "text", dim)


@pytest.fixture(autouse=True)
def _reset_sleeps():
    sleeps.clear()


# ---------------------------------------------------------------- every method, both encodings
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sync_text_methods_return_float32_arrays_in_order(encoding):
    fake = FakeInfinity()
    with make_client(fake, encoding=encoding) as client:
        single = client.embed_text("hello world")
        assert single.dtype == np.float32 and single.flags.c_contiguous
        np.testing.assert_array_equal(single, expected_text("hello world"))
        np.testing.assert_array_equal(client.embed_query("a query"), expected_text("a query"))
        texts = [f"document number {i} " * (i % 5 + 1) for i in range(25)]
        for method in (client.embed_documents, client.embed_documents_batch):
            results = method(texts)
            assert len(results) == 25
            for text, result in zip(texts, results):
                np.testing.assert_array_equal(result, expected_text(text))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sync_image_methods(encoding, tmp_path):
    fake = FakeInfinity()
    images = [png_bytes(color=(i, i, i)) for i in range(12)]
    with make_client(fake, encoding=encoding, embed_batch_size=5) as client:
        assert client.embed_image(images[0]).shape == (16, 128)
        assert [r.shape for r in client.embed_images(images)] == [(16, 128)] * 12
        batch = client.embed_images_batch(images)
        assert len(batch) == 12 and all(r.shape == (16, 128) for r in batch)
    image_requests = [r for r in fake.embedding_requests if r["modality"] == "image"]
    assert sorted(len(r["input"]) for r in image_requests) == [1, 2, 5, 5, 12]  # batches run concurrently
    assert all(r["encoding_format"] == encoding for r in image_requests)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_async_methods_match_sync_results(encoding):
    fake = FakeInfinity()
    texts = [f"text {i}" for i in range(13)]
    images = [png_bytes(color=(i, 0, 0)) for i in range(4)]

    async def run():
        async with make_client(fake, encoding=encoding, embed_batch_size=3) as client:
            return (await client.aembed_text("x y"), await client.aembed_query("q"),
                    await client.aembed_documents(texts), await client.aembed_documents_batch(texts),
                    await client.aembed_image(images[0]), await client.aembed_images(images),
                    await client.aembed_images_batch(images))

    text, query, docs, docs_batch, image, imgs, imgs_batch = asyncio.run(run())
    np.testing.assert_array_equal(text, expected_text("x y"))
    np.testing.assert_array_equal(query, expected_text("q"))
    for t, a, b in zip(texts, docs, docs_batch):
        np.testing.assert_array_equal(a, expected_text(t))
        np.testing.assert_array_equal(b, expected_text(t))
    for a, b in zip(imgs, imgs_batch):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(image, imgs[0])


def test_request_uses_encoding_format_and_data_uris():
    fake = FakeInfinity()
    with make_client(fake) as client:
        client.embed_image(png_bytes())
    body = fake.embedding_requests[-1]
    assert body["encoding_format"] == "base64" and "encoding" not in body
    assert body["modality"] == "image" and body["input"][0].startswith("data:image/png;base64,")


def test_base64_and_float_give_equal_arrays():
    results = {}
    for encoding in ENCODINGS:
        with make_client(FakeInfinity(padding="trailing"), encoding=encoding) as client:
            results[encoding] = client.embed_documents(["one two three", "four"])
    for a, b in zip(results["base64"], results["float"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("padding", ["trailing", "leading"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_all_zero_padding_rows_are_dropped(padding, encoding):
    fake = FakeInfinity(padding=padding)
    with make_client(fake, encoding=encoding) as client:
        results = client.embed_documents(["a b c", "d e", "f"])
    for text, result in zip(["a b c", "d e", "f"], results):
        np.testing.assert_array_equal(result, expected_text(text))
        assert result.any(axis=1).all()


# ---------------------------------------------------------------- concurrency and order
def test_sync_batch_keeps_order_when_responses_complete_out_of_order():
    rng = random.Random(7)
    in_flight, peak = [0], [0]

    def delay(body):
        return rng.uniform(0.0, 0.03)

    fake = FakeInfinity(delay=delay)
    original = fake.handle

    def counting(request):
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        try:
            return original(request)
        finally:
            in_flight[0] -= 1

    fake.handle = counting
    texts = [f"doc {i}" for i in range(60)]
    with make_client(fake, embed_batch_size=2, max_concurrency=4) as client:
        results = client.embed_documents_batch(texts)
    for text, result in zip(texts, results):
        np.testing.assert_array_equal(result, expected_text(text))
    assert 2 <= peak[0] <= 4


def test_async_batch_keeps_order_and_concurrency_limit():
    rng = random.Random(3)
    fake = FakeInfinity(delay=lambda body: rng.uniform(0.0, 0.03))
    in_flight, peak = [0], [0]
    original = fake.ahandle

    async def counting(request):
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        try:
            return await original(request)
        finally:
            in_flight[0] -= 1

    fake.ahandle = counting
    texts = [f"doc {i}" for i in range(60)]

    async def run():
        async with make_client(fake, embed_batch_size=2, max_concurrency=3) as client:
            return await client.aembed_documents_batch(texts)

    results = asyncio.run(run())
    for text, result in zip(texts, results):
        np.testing.assert_array_equal(result, expected_text(text))
    assert 2 <= peak[0] <= 3


def test_batch_splits_at_server_limits_even_with_large_batch_size():
    fake = FakeInfinity()
    with make_client(fake, embed_batch_size=5000) as client:
        assert len(client.embed_documents_batch(["t"] * 2049)) == 2049
        assert len(client.embed_images_batch([png_bytes()] * 33)) == 33
        assert len(client.embed_documents(["t"] * 2049)) == 2049
    sizes = [len(r["input"]) for r in fake.embedding_requests if r["encoding_format"] == "base64"]
    assert sorted(sizes) == [1, 1, 1, 32, 2048, 2048]


def test_iter_embeddings_streams_results_in_order():
    fake = FakeInfinity()
    texts = (f"t{i}" for i in range(23))
    with make_client(fake, embed_batch_size=4) as client:
        results = list(client.iter_embeddings(texts))
    assert len(results) == 23
    np.testing.assert_array_equal(results[22], expected_text("t22"))



def test_iter_embeddings_holds_no_more_batches_than_max_buffered_bytes_allows():
    fake = FakeInfinity()
    texts = [f"doc {i}" for i in range(40)]  # 4 rows each: a batch of 2 holds 4 KB of vectors
    batch_bytes = 2 * 4 * 128 * 4 * (1 + 4 / 3)  # vectors plus their base64 response body
    pulled = [0]

    def inputs():
        for text in texts:
            pulled[0] += 1
            yield text

    def batches_ahead(**options) -> int:
        pulled[0], ahead = 0, []
        for i, result in enumerate(client.iter_embeddings(inputs(), **options)):
            np.testing.assert_array_equal(result, expected_text(texts[i]))
            if i % 2 == 0 and i >= 8:  # a batch's first result, once the 4 sent before any size was known are out
                ahead.append(pulled[0] // 2 - (i // 2 + 1))
        return max(ahead)

    with make_client(fake, embed_batch_size=2, max_concurrency=4) as client:
        # Three batches fit: the one being consumed and two sent ahead of it.
        assert batches_ahead(max_buffered_bytes=int(3 * batch_bytes) + 1) == 2
        assert batches_ahead() == 2 * 4 - 1  # without a byte bound: 2 * max_concurrency held



def test_sync_batches_prepare_their_images_while_waiting_for_a_request_slot(monkeypatch):
    fake = FakeInfinity(delay=0.2)
    first_answer, prepared_before = [], []
    original = fake.handle

    def answering(request):
        response = original(request)
        first_answer.append(True)
        return response

    real_uri = wire.image_data_uri

    def preparing(image):
        prepared_before.append(not first_answer)
        return real_uri(image)

    fake.handle = answering
    monkeypatch.setattr(wire, "image_data_uri", preparing)
    with make_client(fake, embed_batch_size=1, max_concurrency=2, verify_hidden_dim=False) as client:
        results = client.embed_images_batch([png_bytes(color=(i, 0, 0)) for i in range(6)])
    assert len(results) == 6
    # Two requests in flight; the next two batches were prepared before either answer came back.
    assert sum(prepared_before) == 4

# ---------------------------------------------------------------- retries
@pytest.mark.parametrize("fault", [
    fi.status(503), fi.status(500), fi.status(429), fi.connection_reset(), fi.read_timeout(),
    fi.raw_body(b'{"data": [tru'),
], ids=["503", "500", "429", "reset", "timeout", "truncated-json"])
def test_transient_failures_are_retried_then_succeed(fault):
    fake = FakeInfinity()
    with make_client(fake, max_retries=3) as client:
        client.embed_text("warm up")  # the hidden_dim probe and a first request
        fake.faults = [fault, fault]
        np.testing.assert_array_equal(client.embed_text("hi"), expected_text("hi"))
        assert client.stats.retries == 2
    assert len(sleeps) == 2


def test_retry_after_header_is_honoured():
    fake = FakeInfinity()
    with make_client(fake) as client:
        client.embed_text("warm up")
        fake.faults = [fi.status(429, headers={"Retry-After": "7"})]
        client.embed_text("hi")
    assert sleeps == [7.0]


def test_async_retries_without_real_sleep():
    fake = FakeInfinity()

    async def run():
        async with make_client(fake) as client:
            await client.aembed_text("warm")
            fake.faults = [fi.status(503), fi.connection_reset()]
            return await client.aembed_text("hi")

    np.testing.assert_array_equal(asyncio.run(run()), expected_text("hi"))
    assert len(sleeps) == 2


def test_retries_stop_after_max_retries_with_the_server_message():
    fake = FakeInfinity()
    with make_client(fake, max_retries=2) as client:
        client.embed_text("warm")
        fake.faults = [fi.status(503)] * 5
        with pytest.raises(InfinityServerError, match="injected 503") as info:
            client.embed_text("hi")
    assert info.value.status_code == 503 and len(sleeps) == 2


@pytest.mark.parametrize("code", [400, 422])
def test_client_errors_are_not_retried(code):
    fake = FakeInfinity()
    body = {"error": {"message": "bad thing"}} if code == 400 else {"detail": [{"loc": ["body", "input"], "msg": "bad thing"}]}
    with make_client(fake) as client:
        client.embed_text("warm")
        before = len(fake.requests)
        fake.faults = [fi.status(code, body=body)]
        with pytest.raises(InfinityBadRequestError, match="bad thing") as info:
            client.embed_text("hi")
    assert info.value.status_code == code and info.value.server_message.endswith("bad thing")
    assert len(fake.requests) == before and sleeps == []


def test_unreachable_server_names_the_url():
    client = InfinityEmbeddings(url="http://127.0.0.1:9", max_retries=1, hidden_dim=128)
    client._sleep = lambda s: None
    with pytest.raises(InfinityConnectionError, match=r"http://127\.0\.0\.1:9.*INFINITY_API_URL"):
        client.embed_text("x")


def test_missing_api_key_gives_authentication_error():
    fake = FakeInfinity(api_key="s3cret-key")
    with make_client(fake) as client:
        with pytest.raises(InfinityAuthenticationError, match="INFINITY_API_KEY"):
            client.embed_text("x")
    with make_client(fake, api_key="s3cret-key") as client:
        assert client.embed_text("x").shape[1] == 128
        assert "s3cret" not in repr(client)


# ---------------------------------------------------------------- malformed responses
def test_hidden_dim_mismatch_is_detected_even_when_sizes_divide():
    fake = FakeInfinity(hidden_dim=384)
    with make_client(fake) as client:
        client.hidden_dim = 128
        with pytest.raises(InfinityResponseError, match=r"384-dimensional.*hidden_dim is 128"):
            client.embed_text("x")


@pytest.mark.parametrize("api", ["sync", "async"])
def test_batch_methods_verify_hidden_dim_beside_their_first_batches(api):
    fake = FakeInfinity(delay=0.2)
    in_flight, peak = [0], [0]
    original = fake.handle if api == "sync" else fake.ahandle

    def entering():
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])

    if api == "sync":
        def counting(request):
            entering()
            try:
                return original(request)
            finally:
                in_flight[0] -= 1
        fake.handle = counting
    else:
        async def acounting(request):
            entering()
            try:
                return await original(request)
            finally:
                in_flight[0] -= 1
        fake.ahandle = acounting
    with make_client(fake, embed_batch_size=2) as client:
        texts = ["a", "b", "c"]
        results = (client.embed_documents_batch(texts) if api == "sync"
                   else asyncio.run(client.aembed_documents_batch(texts)))
    assert [r["encoding_format"] for r in fake.embedding_requests].count("float") == 1
    assert peak[0] == 3  # the probe and both batches at once: one round trip instead of two
    np.testing.assert_array_equal(results[2], expected_text("c"))


@pytest.mark.parametrize("api", ["sync", "async"])
def test_batch_methods_raise_a_hidden_dim_mismatch_before_any_result(api):
    fake = FakeInfinity(hidden_dim=384)
    with make_client(fake) as client:
        client.hidden_dim = 128  # 384 floats also split into 128-wide rows: only the probe can tell
        with pytest.raises(InfinityResponseError, match=r"384-dimensional.*hidden_dim is 128"):
            if api == "sync":
                list(client.iter_embeddings(["x", "y"]))
            else:
                asyncio.run(client.aembed_documents_batch(["x", "y"]))


def test_hidden_dim_none_is_detected_once():
    fake = FakeInfinity(hidden_dim=96)
    with make_client(fake) as client:
        client.hidden_dim = None
        assert client.embed_text("a b").shape == (4, 96)
        client.embed_text("c")
    assert client.hidden_dim == 96
    assert [r["encoding_format"] for r in fake.embedding_requests] == ["float", "base64", "base64"]


def test_payload_not_multiple_of_hidden_dim_names_setting_and_model():
    fake = FakeInfinity()
    bad = json.dumps({"data": [{"embedding": "AAAAAAAAAAA=", "index": 0}]}).encode()
    with make_client(fake) as client:
        client.embed_text("warm")
        fake.faults = [fi.raw_body(bad)]
        with pytest.raises(InfinityResponseError, match=r"model .fake-model. has 8 bytes.*hidden_dim=128"):
            client.embed_text("x")


def test_count_mismatch_is_an_error():
    fake = FakeInfinity()
    one = json.dumps({"data": [{"embedding": [[1.0] * 128], "index": 0}]}).encode()
    with make_client(fake, encoding="float") as client:
        fake.faults = [fi.raw_body(one)]
        with pytest.raises(InfinityResponseError, match="returned 1 embeddings for 2 inputs"):
            client.embed_documents(["a", "b"])


# ---------------------------------------------------------------- images
def test_each_image_input_type(tmp_path):
    raw = png_bytes(color=(1, 2, 3))
    path = tmp_path / "page.png"
    path.write_bytes(raw)
    fake = FakeInfinity()
    with make_client(fake) as client:
        results = client.embed_images([str(path), path, raw, io.BytesIO(raw), Image.open(io.BytesIO(raw))])
    assert all(r.shape == (16, 128) for r in results)
    uris = fake.embedding_requests[-1]["input"]
    assert len(set(uris[:4])) == 1  # PNG bytes are sent unchanged, whatever the input type


def test_jpeg_is_sent_unchanged_and_bmp_converted_to_png():
    jpeg, bmp = png_bytes(fmt="JPEG"), png_bytes(fmt="BMP")
    fake = FakeInfinity()
    with make_client(fake) as client:
        client.embed_images([jpeg, bmp])
    jpeg_uri, bmp_uri = fake.embedding_requests[-1]["input"]
    assert jpeg_uri.startswith("data:image/jpeg;base64,")
    import base64
    assert base64.b64decode(jpeg_uri.split(",", 1)[1]) == jpeg
    assert bmp_uri.startswith("data:image/png;base64,")


def test_tiny_image_is_refused_before_sending():
    fake = FakeInfinity()
    with make_client(fake) as client:
        with pytest.raises(InvalidInputError, match="2x2 pixels"):
            client.embed_image(png_bytes(size=(2, 2)))
    assert fake.requests == []


def test_missing_image_file_names_the_path(tmp_path):
    with make_client(FakeInfinity()) as client:
        with pytest.raises(BatchEmbeddingError, match=r"input 1: cannot read image file .*nope\.png"):
            client.embed_images_batch([png_bytes(), tmp_path / "nope.png"])


def test_bisect_finds_the_one_image_the_server_refuses_among_20():
    images = [png_bytes(color=(i, 0, 0)) for i in range(20)]
    images[13] = png_bytes(size=(fi.REFUSED_IMAGE_WIDTH, 8))
    fake = FakeInfinity()
    with make_client(fake, embed_batch_size=20) as client:
        results = client.embed_images_batch(images, errors="collect")
        with pytest.raises(BatchEmbeddingError, match="input 13: HTTP 400") as info:
            client.embed_images_batch(images)
    assert [i for i, r in enumerate(results) if not isinstance(r, np.ndarray)] == [13]
    assert isinstance(results[13], InfinityBadRequestError) and "unsupported image" in str(results[13])
    assert list(info.value.failures) == [13]


def _corrupt_pixels(png: bytes) -> bytes:
    """The PNG with one byte of its pixel data (IDAT) flipped: complete, but its checksum no longer matches."""
    at = png.index(b"IDAT") + 10
    return png[:at] + bytes([png[at] ^ 0xFF]) + png[at + 1:]


@pytest.mark.parametrize("damage", [lambda png: png[:60], lambda png: png[:-12], _corrupt_pixels,
                                    lambda png: png_bytes(size=(64, 64), fmt="JPEG")[:300]],
                         ids=["truncated-header", "no-iend", "corrupt-pixels", "truncated-jpeg"])
def test_truncated_or_corrupt_image_is_refused_before_sending(damage):
    # A truncated image crashes the real server's worker (see wire.image_data_uri); it must never be sent.
    # PNGs are checked without decoding (chunk checksums and IEND), other formats by decoding them.
    broken = damage(png_bytes(size=(64, 64)))
    fake = FakeInfinity()
    with make_client(fake) as client:
        results = client.embed_images_batch([png_bytes(), broken], errors="collect")
    assert isinstance(results[1], InvalidInputError) and "truncated or corrupt" in str(results[1])
    sent = [u for r in fake.embedding_requests if r["modality"] == "image" for u in r["input"]]
    assert len(sent) == 1


def test_collect_with_invalid_text_keeps_the_others():
    fake = FakeInfinity()
    with make_client(fake) as client:
        results = client.embed_documents_batch(["ok", "x" * 122_881, "fine"], errors="collect")
    assert isinstance(results[1], InvalidInputError) and "122,881 characters" in str(results[1])
    np.testing.assert_array_equal(results[2], expected_text("fine"))


# ---------------------------------------------------------------- misc
def test_health_and_models():
    with make_client(FakeInfinity(model="m1")) as client:
        assert "unix" in client.health()
        assert client.models() == ["m1"]


def test_url_defaults_to_environment(monkeypatch):
    monkeypatch.setenv("INFINITY_API_URL", "http://infinity.example:1234/")
    assert InfinityEmbeddings().url == "http://infinity.example:1234"
    monkeypatch.delenv("INFINITY_API_URL")
    assert InfinityEmbeddings().url == "http://localhost:7997"


def test_api_key_never_in_logs(caplog):
    fake = FakeInfinity(api_key="top-secret-123")
    caplog.set_level(logging.DEBUG)
    with make_client(fake, api_key="top-secret-123") as client:
        client.embed_text("warm")
        fake.faults = [fi.status(503)]
        client.embed_text("x")
    assert "retry 1 of 3" in caplog.text
    assert "top-secret-123" not in caplog.text


def test_show_progress_prints_a_bar(capsys):
    with make_client(FakeInfinity()) as client:
        client.embed_documents_batch(["a"] * 30, show_progress=True)
    assert "30/30" in capsys.readouterr().err


def test_sync_client_is_reusable_across_asyncio_runs():
    client = make_client(FakeInfinity())
    for _ in range(2):
        assert asyncio.run(client.aembed_text("again")).shape == (3, 128)
    client.close()
