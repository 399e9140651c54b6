"""MaxSim search: exact maths on small arrays, and retrieval sanity with the real MiniLM weights."""
from __future__ import annotations

import numpy as np

from infinity_assets import InfinityEmbeddings
from infinity_assets.index.maxsim import maxsim, maxsim_scores, search, stack

DOCUMENTS = [
    "the lighthouse keeper painted the spiral staircase bright red every spring",
    "volcanic soil makes the vineyards on the island produce unusually sweet grapes",
    "the orchestra rehearsed the symphony twice before the sold out premiere",
    "a migrating flock of cranes rested on the frozen lake at dawn",
    "the bakery replaced its wood fired oven with a modern electric model",
    "engineers reinforced the suspension bridge after the winter storms",
    "the chess champion sacrificed her queen to win the final game",
    "astronomers detected a faint comet passing close to jupiter",
    "the museum restored a medieval tapestry depicting a royal hunt",
    "heavy rainfall flooded the subway tunnels during the morning commute",
    "the startup released an open source database written in rust",
    "a rare orchid bloomed in the botanical garden greenhouse last week",
    "farmers harvested pumpkins early because of the approaching frost",
    "the submarine surfaced near the arctic research station",
    "children built a snow fort in the schoolyard during recess",
    "the novelist finished her third mystery book set in venice",
    "a stray cat adopted the fire station as its permanent home",
    "the marathon route passes the old cathedral and the harbour",
    "scientists sequenced the genome of an ancient wheat variety",
    "the airline cancelled flights because of a volcanic ash cloud",
    "a jazz trio played in the hotel lobby every friday evening",
    "the city council approved new bicycle lanes along the river",
    "divers discovered a shipwreck full of porcelain off the coast",
    "the professor explained quantum entanglement with two coins",
    "beekeepers moved their hives to the lavender fields in july",
    "the goalkeeper saved a penalty in the last minute of the match",
    "a solar storm disrupted radio communication for several hours",
    "the chef prepared a seven course tasting menu of seafood",
    "mountain rescuers found the lost hikers near the glacier",
    "the library digitised thousands of handwritten letters from sailors",
]


def test_maxsim_matches_the_definition():
    rng = np.random.default_rng(0)
    query = rng.standard_normal((4, 8)).astype(np.float32)
    documents = [rng.standard_normal((n, 8)).astype(np.float32) for n in (1, 5, 3)]
    vectors, offsets = stack(documents)
    expected = [sum(max(float(q @ d) for d in doc) for q in query) for doc in documents]
    np.testing.assert_allclose(maxsim_scores(query, vectors, offsets), expected, rtol=1e-5)
    np.testing.assert_allclose([maxsim(query, doc) for doc in documents], expected, rtol=1e-5)
    ranked = search(query, vectors, offsets, k=2)
    assert [i for i, _ in ranked] == list(np.argsort(expected)[::-1][:2])


def test_five_consecutive_words_find_their_document(infinity_server):
    with InfinityEmbeddings(url=infinity_server.url, model_name="minilm-colbert", hidden_dim=384) as client:
        vectors, offsets = stack(client.embed_documents_batch(DOCUMENTS))
        hits = 0
        for index, document in enumerate(DOCUMENTS):
            words = document.split()
            query = client.embed_query(" ".join(words[2:7]))
            hits += search(query, vectors, offsets, k=1)[0][0] == index
    assert hits / len(DOCUMENTS) >= 0.9, f"only {hits} of {len(DOCUMENTS)} documents ranked first"
