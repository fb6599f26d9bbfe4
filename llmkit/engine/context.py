"""The llama.cpp context the engine's slots share: one KV cache for N sequences."""

from __future__ import annotations

import llama_cpp

# --kv-type: the ggml type of the K and V cache.
KV_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}


def make_context(
    model: llama_cpp.llama_model_p,
    *,
    parallel: int,
    cells: int,
    n_batch: int,
    threads: int,
    kv_type: str,
) -> llama_cpp.llama_context_p:
    """A context of `cells` KV cells shared by `parallel` sequences; raises if llama.cpp can't."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = cells
    params.n_batch = params.n_ubatch = n_batch
    params.n_seq_max = parallel
    params.n_threads = params.n_threads_batch = threads
    params.kv_unified = True  # one cache shared by all slots, as llama-server does
    params.swa_full = True  # keep sliding-window layers whole, so a cached prefix can be reused
    params.no_perf = True
    if kv_type != "f16":  # a quantized V cache needs flash attention in llama.cpp
        params.type_k = params.type_v = KV_TYPES[kv_type]
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        raise RuntimeError("llama.cpp could not create a context for this model")
    return ctx
