"""End to end against the real CPU Infinity server (``infinity_emb`` with the offline models of ``make models``).

Texts go to ``minilm-colbert-128`` and images to ``colpali-tiny``; our client and the load generator send the
same batches (10 per request, 8 in flight), interleaved, several repetitions. On CPU the model is the
bottleneck, so this shows whether the client costs the server any throughput when they share 2 cores.
"""
from __future__ import annotations

import statistics
from typing import Any

from .workloads import make_images, make_texts, run_client

TEXT_MODEL, IMAGE_MODEL = "minilm-colbert-128", "colpali-tiny"


def run(texts: int = 400, images: int = 160, repetitions: int = 3) -> dict[str, Any]:
    """Median texts/s and images/s of ours (sync) and the load generator; the server is started and stopped here."""
    from infinity_assets_dev.infinity import InfinityServer

    results: dict[str, Any] = {}
    with InfinityServer([TEXT_MODEL, IMAGE_MODEL]) as server:
        for modality, model, inputs in (("text", TEXT_MODEL, make_texts(texts)),
                                        ("image", IMAGE_MODEL, make_images(images))):
            times: dict[str, list[float]] = {"limit": [], "ours_sync": []}
            for _ in range(repetitions):
                for name in times:
                    times[name] += run_client(name, server.url, model, modality, inputs, hidden_dim=128)
            for name, seconds in times.items():
                results[f"{modality}_{name}_per_s"] = len(inputs) / statistics.median(seconds)
            results[f"{modality}_count"] = len(inputs)
    return results
