"""The default model's tokenizer: byte-level BPE trained offline on the catalogue's own text.

Built with `tokenizers` (no hub download) and wrapped in `PreTrainedTokenizerFast`, so that it
saves and loads like any Hugging Face tokenizer (vLLM included). Its normaliser and
pre-tokeniser are exactly Qwen2's (NFC, Qwen2's regex split, byte-level without prefix space):
should anything load it as Qwen2's tokenizer class, the ids stay the same.

Besides the chat and answer special tokens, whole template fragments ("3 weeks later: [", the
instruction sentences, "] (4)") and one "<i{item_id}>" token per item are added as single
tokens: prompts get ~1.7x shorter and each item gets an id embedding (docs/default-model.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import PreTrainedTokenizerFast

from r2ec.prompts import ANSWER, ANSWER_END

QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"""
               r"""[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
PAD, BOS_EOS, IM_START, IM_END = "<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS_EOS, IM_START, IM_END, ANSWER, ANSWER_END]

# ChatML, as Qwen2 writes it; `continue_final_message` leaves the assistant turn open.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% if not (loop.last and continue_final_message is defined and continue_final_message) %}"
    "{{ '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(
    corpus: Iterable[str],
    vocab_size: int,
    fragments: Iterable[str] = (),
    item_tokens: Iterable[str] = (),
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train the BPE on `corpus`, then add `fragments` and `item_tokens` as whole tokens."""
    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    extra = list(dict.fromkeys([*fragments, *item_tokens]))  # ordered, unique
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in extra])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_EOS,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        padding_side="left",  # generation pads on the left; hidden-state code handles both
        additional_special_tokens=[IM_START, ANSWER, ANSWER_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
    )
    return fast
