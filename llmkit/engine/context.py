"""The llama.cpp context the engine's slots share: one KV cache, a stream of cells for each slot."""

from __future__ import annotations

import llama_cpp

# --kv-type: the ggml type of the K and V cache.
KV_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}
# How much memory the logits of one decode may take. llama.cpp holds them twice, rows x n_vocab
# floats each: as the graph's output in the compute buffer, reserved at context creation for
# n_outputs_max rows (n_batch unless told), and in the output buffer they are copied to, grown to
# the most rows a decode has had and never shrunk (llama_context::output_reserve). At n_batch 512
# and Gemma 3's 262,144 tokens, that was 512 MiB each. Prompt logprobs, which need every row, take
# fewer prompt tokens a step instead (64 for Gemma 3; 512 still for a 32,000-token vocabulary): the
# same values, a slower decode. The memory plan counts them (ModelInfo.logits_bytes).
LOGITS_BYTES_MAX = 64 * 1024 * 1024


def logit_rows(parallel: int, n_vocab: int, n_batch: int) -> int:
    """The most rows with logits in one decode: a power of two up to n_batch whose logits fit
    LOGITS_BYTES_MAX, at least 16, and at least one a slot (every generating sequence needs its
    row each step)."""
    rows = n_batch
    while rows > 16 and rows * n_vocab * 4 > LOGITS_BYTES_MAX:
        rows //= 2
    return max(rows, parallel)


def make_context(
    model: llama_cpp.llama_model_p,
    *,
    parallel: int,
    cells: int,
    n_batch: int,
    threads: int,
    kv_type: str,
    logit_rows: int,
) -> llama_cpp.llama_context_p:
    """A context of `cells` KV cells, a stream of cells/parallel for each of `parallel`
    sequences; raises if llama.cpp can't.

    One stream a sequence, as llama-server -np N has them: a token's attention reads its own
    sequence's cells only. In one unified cache it reads every slot's cells, idle slots' cached
    prompts included, so that a prompt beside three slots that keep long prompts took about 1.5x
    the time. The price: llama.cpp splits a decode into equal parts by sequence (see
    `batch.fill`), and copying a prefix between slots copies the whole stream.

    It reserves logits for `logit_rows` rows a decode (at least `parallel`): a decode asking for
    more aborts the process (a GGML_ASSERT in output_reserve), so the scheduler never sends one."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = cells
    params.n_batch = params.n_ubatch = n_batch
    params.n_outputs_max = logit_rows
    params.n_seq_max = parallel
    params.n_threads = params.n_threads_batch = threads
    params.kv_unified = False
    params.swa_full = True  # keep sliding-window layers whole, so a cached prefix can be reused
    params.no_perf = True
    if kv_type != "f16":  # a quantized V cache needs flash attention in llama.cpp
        params.type_k = params.type_v = KV_TYPES[kv_type]
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        raise RuntimeError("llama.cpp could not create a context for this model")
    return ctx
