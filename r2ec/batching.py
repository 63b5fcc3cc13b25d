"""Torch-level helpers shared by inference and training: batching token-id lists, and the
last-real-token hidden state that both of R²ec's heads read (h_T for users, H_V for items).

Why explicit position ids: a left-padded row would otherwise start its positions at the padding,
so its hidden states would differ from the same text unpadded. With positions counted over real
tokens only, left padding, right padding and no padding give the same states.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right", device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T) long tensors."""
    if not seqs:
        raise ValueError("empty batch")
    if any(len(s) == 0 for s in seqs):
        raise ValueError("a sequence in the batch is empty")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        row = torch.as_tensor(list(s), dtype=torch.long)
        if side == "left":
            ids[i, width - len(s):], mask[i, width - len(s):] = row, 1
        elif side == "right":
            ids[i, : len(s)], mask[i, : len(s)] = row, 1
        else:
            raise ValueError(f"padding side must be 'left' or 'right', not {side!r}")
    return ids.to(device), mask.to(device)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over real tokens; padding gets 0 (it is never attended to)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, whatever the padding side."""
    width = mask.shape[1]
    return width - 1 - mask.flip(-1).argmax(-1)


def hidden_states(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, d) final-layer, final-norm hidden states. Goes through the model's own forward (so
    DDP/accelerate wrappers see it) with logits for one position only: the LM head over the
    whole sequence would cost about as much as the model itself."""
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids(mask),
                output_hidden_states=True, logits_to_keep=1, use_cache=False)
    return out.hidden_states[-1]


def last_token_states(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, d) hidden state at each row's last real token. Gradient flows when called outside
    `torch.no_grad()` (training)."""
    hidden = hidden_states(model, input_ids, mask)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index(mask)]


def forward_tail(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, keep: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """For LEFT-padded sequences: ((B, T, d) final hidden states, (B, keep - 1, V) logits that
    predict the last keep - 1 tokens). Logits are computed for the tail only."""
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids(mask),
                output_hidden_states=True, logits_to_keep=keep, use_cache=False)
    return out.hidden_states[-1], out.logits[:, :-1]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding = less CPU time)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
