"""InfinityEmbeddings against the real infinity_emb server (0.0.78) serving the offline models.

Proves the client against the real protocol, not our idea of it: encodings, shapes, padding, limits, errors.
"""
from __future__ import annotations

import asyncio
import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageDraw

from infinity_assets import (
    BatchEmbeddingError,
    InfinityAuthenticationError,
    InfinityBadRequestError,
    InfinityEmbeddings,
    InfinityResponseError,
)
from infinity_assets.client import wire
from infinity_assets_dev.infinity import IMAGE_MODELS, MODELS

ENCODINGS = ["base64", "float"]


def page(i: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    image = Image.new("RGB", size, (250, 250, 245))
    ImageDraw.Draw(image).text((2, 2), f"p{i}", fill=(i * 37 % 255, 0, 0))
    return image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def client_for(server, model: str, **options) -> InfinityEmbeddings:
    return InfinityEmbeddings(url=server.url, model_name=model, hidden_dim=MODELS[model], **options)


@pytest.mark.parametrize("model", list(MODELS))
def test_every_text_method_in_both_encodings_agrees(infinity_server, model):
    texts = ["late interaction retrieval", "a second, somewhat longer document about vectors", "third"]
    results = {}
    for encoding in ENCODINGS:
        with client_for(infinity_server, model, encoding=encoding, embed_batch_size=2) as client:
            single = client.embed_text(texts[0])
            query = client.embed_query(texts[0])
            documents = client.embed_documents(texts)
            batch = client.embed_documents_batch(texts)

            async def run_async():
                return (await client.aembed_text(texts[0]), await client.aembed_query(texts[0]),
                        await client.aembed_documents(texts), await client.aembed_documents_batch(texts))

            a_single, a_query, a_documents, a_batch = asyncio.run(run_async())
        for array in [single, query, a_single, a_query, *documents, *batch, *a_documents, *a_batch]:
            assert array.dtype == np.float32 and array.ndim == 2 and array.shape[1] == MODELS[model]
            assert array.shape[0] >= 1 and array.any(axis=1).all()
        np.testing.assert_allclose(single, query, atol=1e-5)
        for parts in zip(documents, batch, a_documents, a_batch):
            for other in parts[1:]:
                np.testing.assert_allclose(parts[0], other, atol=1e-4)
        results[encoding] = documents
    for b64, flt in zip(results["base64"], results["float"]):
        np.testing.assert_allclose(b64, flt, atol=1e-4)


@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_every_image_method_and_input_type(infinity_server, model, tmp_path):
    path = tmp_path / "page.png"
    path.write_bytes(png_bytes(page(1)))
    inputs = [str(path), path, png_bytes(page(1)), io.BytesIO(png_bytes(page(1))), page(1)]
    results = {}
    for encoding in ENCODINGS:
        with client_for(infinity_server, model, encoding=encoding, embed_batch_size=2) as client:
            single = client.embed_image(path)
            many = client.embed_images(inputs)
            batch = client.embed_images_batch(inputs)

            async def run_async():
                return (await client.aembed_image(path), await client.aembed_images(inputs),
                        await client.aembed_images_batch(inputs))

            a_single, a_many, a_batch = asyncio.run(run_async())
        for array in [single, a_single, *many, *batch, *a_many, *a_batch]:
            assert array.shape[1] == 128 and array.shape[0] > 1
            np.testing.assert_allclose(array, single, atol=1e-4)  # the same page, whatever the input type
        results[encoding] = single
    np.testing.assert_allclose(results["base64"], results["float"], atol=1e-4)


@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_both_transports_return_the_same_vectors(infinity_server, model):
    """httpcore (the default) and the opt-in http11 receiver, sync and async, on the real server's answers."""
    pages = [png_bytes(page(n)) for n in (1, 2, 3)]
    results = {}
    for kind in ("httpcore", "http11"):
        with client_for(infinity_server, model, transport=kind, embed_batch_size=2) as client:
            async def run_async():
                return await client.aembed_images_batch(pages)

            results[kind] = (client.embed_images_batch(pages), asyncio.run(run_async()))
    baseline = results["httpcore"][0]
    for sync, async_ in results.values():
        assert len(sync) == len(async_) == len(pages)
        for ours, theirs in zip([*sync, *async_], baseline * 2):
            # The server batches concurrent requests together, which moves the last bit of a float.
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_base64_answers_take_the_fast_path_and_equal_the_json_path(infinity_server, monkeypatch):
    # The real server's base64 layout is the one wire.decode_response reads without parsing JSON.
    images = [png_bytes(page(i)) for i in range(3)]
    with client_for(infinity_server, "colpali-tiny") as client:
        client.detect_hidden_dim()  # the float probe parses JSON; the embeddings below must not
        with monkeypatch.context() as patched:
            patched.setattr(wire, "parse_json", lambda *a: pytest.fail("a base64 answer was parsed as JSON"))
            fast = client.embed_images(images) + client.embed_documents(["padded", "a longer text " * 6])
    with client_for(infinity_server, "colpali-tiny", encoding="float") as client:
        floats = client.embed_images(images) + client.embed_documents(["padded", "a longer text " * 6])
    for a, b in zip(fast, floats):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_colpali_trailing_padding_is_dropped(infinity_server):
    # ColPali pads short queries with trailing zero rows when batched with longer ones.
    short, long = "tiny", "a much longer query " * 8
    with client_for(infinity_server, "colpali-tiny", encoding="float") as client:
        alone = client.embed_query(short)
        together = client.embed_documents([short, long])
    assert together[0].shape == alone.shape and together[1].shape[0] > alone.shape[0]
    np.testing.assert_allclose(together[0], alone, atol=1e-4)


def test_colqwen2_leading_padding_is_dropped(infinity_server):
    short, long = "tiny", "a much longer query " * 8
    with client_for(infinity_server, "colqwen2-tiny") as client:
        alone = client.embed_query(short)
        together = client.embed_documents([short, long])
    assert together[0].shape == alone.shape and together[1].shape[0] > alone.shape[0]
    np.testing.assert_allclose(together[0], alone, atol=1e-4)


@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_short_query_row_count_is_stable_under_concurrent_long_queries(infinity_server, model):
    short, long = "what is the total", "describe every figure of the quarterly report in detail " * 4
    with client_for(infinity_server, model, max_concurrency=8) as client:
        expected = client.embed_query(short).shape
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(client.embed_query, short if i % 2 == 0 else long) for i in range(24)]
            shapes = [f.result().shape for i, f in enumerate(futures) if i % 2 == 0]
    assert set(shapes) == {expected}


def test_batches_over_the_server_limits_are_split(infinity_server):
    with client_for(infinity_server, "colqwen2-tiny", embed_batch_size=1000, max_concurrency=2) as client:
        images = client.embed_images_batch([page(i, (28, 28)) for i in range(33)])
    assert len(images) == 33 and all(a.shape[1] == 128 for a in images)
    with client_for(infinity_server, "minilm-colbert-128", embed_batch_size=5000) as client:
        texts = client.embed_documents_batch([f"t{i}" for i in range(2049)])
    assert len(texts) == 2049 and all(a.shape[1] == 128 for a in texts)


@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_corrupt_images_are_reported_by_index_and_the_rest_embedded(infinity_server, model):
    images = [png_bytes(page(i)) for i in range(6)]
    images[1] = b"not an image at all"
    images[4] = png_bytes(page(4, (64, 64)))[:80]  # valid header, truncated data: it would crash the server
    with client_for(infinity_server, model, embed_batch_size=6) as client:
        results = client.embed_images_batch(images, errors="collect")
        with pytest.raises(BatchEmbeddingError, match="input 4: .*truncated or corrupt"):
            client.embed_images_batch(images)
        assert client.embed_image(images[0]).shape[1] == 128  # the server still answers
    assert [i for i, r in enumerate(results) if not isinstance(r, np.ndarray)] == [1, 4]
    assert all(r.shape[1] == 128 for i, r in enumerate(results) if i not in (1, 4))


def test_server_refusal_of_one_image_is_bisected_to_its_index(infinity_server):
    # The real server refuses this one with HTTP 400 (too small); sent unchecked, the batch is bisected.
    images = [png_bytes(page(i)) for i in range(5)]
    with client_for(infinity_server, "colqwen2-tiny", embed_batch_size=5) as client:
        uris = [wire.image_data_uri(image) for image in images]
        uris[2] = "data:image/png;base64," + base64.b64encode(png_bytes(Image.new("RGB", (2, 2)))).decode()
        results = client._embed_sent(uris, "image")
    assert [i for i, r in enumerate(results) if not isinstance(r, np.ndarray)] == [2]
    assert "too small" in results[2].server_message


def test_wrong_hidden_dim_gives_a_clear_error(infinity_server):
    with InfinityEmbeddings(url=infinity_server.url, model_name="minilm-colbert", hidden_dim=128) as client:
        with pytest.raises(InfinityResponseError, match=r"384-dimensional vectors but hidden_dim is 128"):
            client.embed_text("hello")
    with InfinityEmbeddings(url=infinity_server.url, model_name="minilm-colbert", hidden_dim=None) as client:
        assert client.embed_text("hello").shape[1] == 384 and client.hidden_dim == 384


def test_unknown_model_names_the_model(infinity_server):
    with InfinityEmbeddings(url=infinity_server.url, model_name="no-such-model") as client:
        with pytest.raises(InfinityBadRequestError, match="no-such-model"):
            client.embed_text("hello")


def test_health_and_models(infinity_server):
    with InfinityEmbeddings(url=infinity_server.url) as client:
        assert "unix" in client.health()
        assert set(client.models()) == set(MODELS)


def test_api_key(start_infinity):
    server = start_infinity(["minilm-colbert-128"], api_key="conformance-key")
    with InfinityEmbeddings(url=server.url, model_name="minilm-colbert-128", api_key="conformance-key") as client:
        assert client.embed_text("authorised").shape[1] == 128
    for key in (None, "wrong-key"):
        with InfinityEmbeddings(url=server.url, model_name="minilm-colbert-128", api_key=key) as client:
            with pytest.raises(InfinityAuthenticationError, match="INFINITY_API_KEY") as info:
                client.embed_text("not authorised")
            assert "conformance-key" not in str(info.value)
