"""How fast a SmolLM2-135M-shaped model writes reasonings on one device, by batch size and KV
cache kind: what sizes the GPU quality run's inference batches and RecPO rollouts. Random
weights of the real shape (Llama, 30 layers, hidden 576, 9/3 heads, vocabulary 49,152): decode
time does not depend on the weights' values, and every sequence runs to the budget, as the
adopted model's reasonings did (127.5 of 128 tokens in the RecPO start's rollouts).

    python bench/decode_speed.py --out artifacts/decode_speed.json          # one CUDA GPU
    python bench/decode_speed.py --device cpu --layers 2 --batches 4,8      # the same path on a CPU
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def smollm2_shape(layers: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                       num_hidden_layers=layers, num_attention_heads=9, num_key_value_heads=3,
                       rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True,
                       eos_token_id=None, pad_token_id=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--prompt-tokens", type=int, default=320, help="about an ML-100k user prompt")
    p.add_argument("--new-tokens", type=int, default=128, help="the reasoning budget")
    p.add_argument("--batches", default="256,512,1024,2048")
    p.add_argument("--caches", default="dynamic,static")
    p.add_argument("--out", default="")
    a = p.parse_args()
    device = torch.device(a.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = LlamaForCausalLM(smollm2_shape(a.layers)).to(device, dtype).eval()
    rows = []
    for cache in a.caches.split(","):
        for batch in map(int, a.batches.split(",")):
            ids = torch.randint(10, 49000, (batch, a.prompt_tokens), device=device)
            kw = dict(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=True,
                      temperature=1.5, top_k=50, pad_token_id=0,
                      attention_mask=torch.ones_like(ids))
            if cache == "static":
                kw["cache_implementation"] = "static"
            try:
                with torch.inference_mode():
                    model.generate(ids[:, :16], **{**kw, "max_new_tokens": 4,
                                                   "min_new_tokens": 4})  # warm-up
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t = time.perf_counter()
                    out = model.generate(ids, **kw)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    s = time.perf_counter() - t
                new = out.shape[1] - a.prompt_tokens
                row = {"cache": cache, "batch": batch, "seconds": round(s, 2),
                       "new_tokens": new, "ms_per_step": round(1000 * s / new, 1),
                       "tokens_per_s": round(batch * new / s)}
            except Exception as e:  # noqa: BLE001 - a size that fails is a result too
                row = {"cache": cache, "batch": batch, "error": f"{type(e).__name__}: {e}"[:300]}
            if device.type == "cuda":
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
            rows.append(row)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": name, "torch": torch.__version__, "args": vars(a), "rows": rows}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
