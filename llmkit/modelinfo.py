"""What a GGUF says about itself (architecture, sizes, chat template), and whether it fits in memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# llama.cpp's compute buffers and Python's own footprint, beyond weights, KV cache and logits
# (ModelInfo.logits_bytes).
OVERHEAD_BYTES = 256 * 1024 * 1024
# Bytes a KV cache value takes, by --kv-type (q8_0: blocks of 32 values in 34 bytes).
KV_BYTES_PER_VALUE = {"f16": 2.0, "q8_0": 34 / 32}


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    size: int
    architecture: str
    context_length: int | None
    n_layer: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    chat_template: str | None
    n_vocab: int = 0

    def kv_cache_bytes(self, n_ctx: int, kv_type: str = "f16") -> int:
        """llama.cpp's KV cache for n_ctx tokens: K and V per layer, f16 by default."""
        per_token = self.n_layer * self.n_head_kv * (self.head_dim_k + self.head_dim_v)
        return int(n_ctx * per_token * KV_BYTES_PER_VALUE[kv_type])

    def logits_bytes(self, rows: int) -> int:
        """llama.cpp's logits for `rows` rows a decode, in float32: twice, as the graph's output in
        the compute buffer and as the output buffer they are copied to (context.LOGITS_BYTES_MAX)."""
        return 2 * rows * self.n_vocab * 4

    def needed_bytes(self, n_ctx: int, kv_type: str = "f16") -> int:
        return self.size + self.kv_cache_bytes(n_ctx, kv_type) + OVERHEAD_BYTES

    def embedding_bytes(self, n_ctx: int, separate: bool) -> int:
        """The embedding context of this model (with its weights when not the served model's)."""
        from llmkit.embeddings import embedding_context_bytes

        own = self.kv_cache_bytes(n_ctx) + embedding_context_bytes(self.n_vocab)
        return own + (self.size if separate else 0)


def read_model_info(path: Path) -> ModelInfo:
    """Read the GGUF's metadata with llama.cpp itself (vocab only: no weights are loaded)."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    try:
        model = LlamaModel(path_model=str(path), params=params, verbose=False)
    except (ValueError, RuntimeError) as exc:
        from llmkit.errors import UnknownModel

        raise UnknownModel(f"{path} is not a GGUF model llama.cpp can load ({exc})") from None
    meta = model.metadata()
    n_vocab = model.n_vocab()
    model.close()
    arch = meta.get("general.architecture", "llama")

    def num(key: str, default: int = 0) -> int:
        value = meta.get(f"{arch}.{key}")
        try:
            return int(value) if value is not None else default
        except ValueError:
            return default

    n_embd, n_head = num("embedding_length"), num("attention.head_count", 1)
    head_dim = n_embd // max(n_head, 1)
    return ModelInfo(
        path=path,
        size=path.stat().st_size,
        architecture=arch,
        context_length=num("context_length") or None,
        n_layer=num("block_count"),
        n_head_kv=num("attention.head_count_kv", n_head),
        head_dim_k=num("attention.key_length", head_dim),
        head_dim_v=num("attention.value_length", head_dim),
        chat_template=meta.get("tokenizer.chat_template"),
        n_vocab=n_vocab,
    )


def available_memory() -> int | None:
    """Memory this process can still use: MemAvailable, or less under a cgroup limit."""
    available: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        return None
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            headroom = int(limit) - usage
            available = headroom if available is None else min(available, headroom)
    return available
