"""The Llama shapes the benchmarks compare at: SmolLM2-135M's, and a small one of the width
of benchmarks/inference.py's GPT (6 layers, 384 wide, vocabulary 8,192)."""

SHAPES: dict[str, dict[str, int]] = {
    "small": {"n_layer": 6, "n_embd": 384, "n_head": 6, "n_kv_head": 2, "intermediate_size": 1024, "vocab": 8192},
    "smollm2": {"n_layer": 30, "n_embd": 576, "n_head": 9, "n_kv_head": 3, "intermediate_size": 1536, "vocab": 49152},
}
