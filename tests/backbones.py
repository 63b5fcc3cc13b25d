"""Tiny random-initialised Hugging Face folders of the production backbone families (Gemma-2,
Llama 3, Qwen2.5), built from a config and a locally trained tokenizer: no hub, no download.

Each tokenizer carries its family's special tokens and a chat template written to behave like
the family's own: Gemma-2 has no system role (a system message is an error), names the
assistant `model` and trims contents; Llama 3 writes header tokens, trims contents and adds a
dated system block; Qwen2.5 adds a default system message. None has a pad token's worth of
guarantees: Llama 3 ships without one, which `adopt` must handle.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import PreTrainedTokenizerFast

GEMMA2_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + m['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
    "{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
QWEN25_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

FAMILIES = {
    # special tokens (first ones get the lowest ids), bos, eos, pad, template
    "gemma2": (["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>",
               "<end_of_turn>", "<pad>", GEMMA2_TEMPLATE),
    "llama": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
               "<|end_header_id|>", "<|eot_id|>"], "<|begin_of_text|>", "<|eot_id|>", None,
              LLAMA3_TEMPLATE),
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>",
              "<|endoftext|>", QWEN25_TEMPLATE),
}


def tiny_tokenizer(family: str, corpus: Iterable[str], vocab_size: int = 600
                   ) -> PreTrainedTokenizerFast:
    specials, bos, eos, pad, template = FAMILIES[family]
    tok = Tokenizer(BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                   pad_token=pad, chat_template=template)


def tiny_config(family: str, tokenizer: PreTrainedTokenizerFast, sliding_window: int = 4096):
    """Two layers, width 64: the family's layout (Gemma-2's soft-capping, sliding-window layers
    and scaled embeddings; Llama's untied head; Qwen2's q/k/v biases) at test size."""
    from transformers import Gemma2Config, LlamaConfig, Qwen2Config

    # Gemma and Qwen ship embedding matrices with spare rows beyond their tokenizers (new tokens
    # then need no resize); Llama's is exact, so `adopt` must grow it.
    rows = len(tokenizer) if family == "llama" else max(512, len(tokenizer))
    ids = {"vocab_size": rows, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
             "max_position_embeddings": 2048}
    if family == "gemma2":
        return Gemma2Config(**ids, **shape, sliding_window=sliding_window, query_pre_attn_scalar=32,
                            attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    if family == "llama":
        return LlamaConfig(**ids, **shape, tie_word_embeddings=False)
    return Qwen2Config(**ids, **shape, tie_word_embeddings=True)


def save_tiny_backbone(family: str, out: Path, corpus: Iterable[str], seed: int = 0,
                       sliding_window: int = 4096) -> Path:
    """A Hugging Face folder (config, safetensors weights, tokenizer) of a random tiny model."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer(family, corpus)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, tokenizer, sliding_window))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
