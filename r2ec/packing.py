"""Packed readouts: many user states from one forward pass, each exactly the state that
inference computes for its prefix.

A packed row is a user prompt's prefix, then history lines, and after some lines a *readout
block*: the tokens that end a prompt at that line (the "now" line, the end of the user turn, the
assistant header, an optional reasoning, <answer>). Its last token's state is h_T for the prompt
made of the lines so far. The block is hidden from everything after it, and its position ids
continue from the line it follows, so to the model the block sits right after that line and
nothing else is there:

    prefix  line1  [block1]  line2  [block2]  line3  [block3] ...
    positions: prefix and lines count up without the blocks; block j counts on from line j.
    attention: a line or prefix token sees earlier prefix/line tokens; a block token sees the
    prefix, the lines before it, and the earlier tokens of its own block.

With rotary positions and a causal decoder this gives, at block j's last token, the same
hidden state as the unpacked prompt "prefix line1..linej blockj" (tested to 1e-5 in float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class Readout:
    after_line: int               # number of lines before this block (1 = after the first line)
    block: Sequence[int]          # token ids of the block, ending at the token read out
    target: int = -1              # catalogue row it predicts (-1: none)
    lm_from: int = -1             # block tokens from this offset on get the LM loss (-1: none)


@dataclass
class Window:
    prefix: Sequence[int]
    lines: Sequence[Sequence[int]]
    readouts: list[Readout] = field(default_factory=list)

    def __len__(self) -> int:
        return (len(self.prefix) + sum(len(x) for x in self.lines)
                + sum(len(r.block) for r in self.readouts))


@dataclass
class Packed:
    input_ids: torch.Tensor       # (B, T)
    position_ids: torch.Tensor    # (B, T)
    attention_mask: torch.Tensor  # (B, 1, T, T) bool, True = may attend
    readout_rows: torch.Tensor    # (R,) batch row of each readout
    readout_pos: torch.Tensor     # (R,) position (column) of its last token
    targets: torch.Tensor         # (R,) catalogue rows, -1 where none
    lm_rows: torch.Tensor         # (M,) rows/cols of the tokens whose next token is predicted
    lm_pos: torch.Tensor          # (M,)
    lm_labels: torch.Tensor       # (M,) the token that follows


def pack(windows: Sequence[Window], pad_id: int, device: torch.device | str = "cpu") -> Packed:
    rows_ids, rows_pos, rows_block = [], [], []
    r_row, r_pos, r_tgt, m_row, m_pos, m_lab = [], [], [], [], [], []
    for b, w in enumerate(windows):
        ids, pos, block = list(w.prefix), list(range(len(w.prefix))), [-1] * len(w.prefix)
        main = len(w.prefix)
        by_line: dict[int, list[Readout]] = {}
        for r in w.readouts:
            if not 1 <= r.after_line <= len(w.lines):
                raise ValueError(f"readout after line {r.after_line} of {len(w.lines)}")
            by_line.setdefault(r.after_line, []).append(r)
        n_block = 0
        for j, line in enumerate(w.lines, start=1):
            ids += line
            pos += range(main, main + len(line))
            block += [-1] * len(line)
            main += len(line)
            for r in by_line.get(j, []):
                start = len(ids)
                ids += r.block
                pos += range(main, main + len(r.block))
                block += [n_block] * len(r.block)
                n_block += 1
                r_row.append(b)
                r_pos.append(len(ids) - 1)
                r_tgt.append(r.target)
                if r.lm_from >= 0:
                    # token at column c predicts the one at c + 1, for the block's taught tail
                    for c in range(start + r.lm_from - 1, len(ids) - 1):
                        m_row.append(b)
                        m_pos.append(c)
                        m_lab.append(ids[c + 1])
        rows_ids.append(ids)
        rows_pos.append(pos)
        rows_block.append(block)
    width = max(len(x) for x in rows_ids)
    B = len(windows)
    ids_t = torch.full((B, width), pad_id, dtype=torch.long)
    pos_t = torch.zeros((B, width), dtype=torch.long)
    block_t = torch.full((B, width), -2, dtype=torch.long)  # -2 = padding
    for b in range(B):
        n = len(rows_ids[b])
        ids_t[b, :n] = torch.tensor(rows_ids[b])
        pos_t[b, :n] = torch.tensor(rows_pos[b])
        block_t[b, :n] = torch.tensor(rows_block[b])
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    key_main = (block_t == -1)[:, None, :]
    same_block = block_t[:, None, :] == block_t[:, :, None]
    real_key = (block_t != -2)[:, None, :]
    mask = causal[None] & (key_main | same_block) & real_key
    mask |= torch.eye(width, dtype=torch.bool)[None]  # padding queries see themselves: no NaN
    dev = torch.device(device)
    return Packed(
        ids_t.to(dev), pos_t.to(dev), mask[:, None].to(dev),
        torch.tensor(r_row, dtype=torch.long, device=dev),
        torch.tensor(r_pos, dtype=torch.long, device=dev),
        torch.tensor(r_tgt, dtype=torch.long, device=dev),
        torch.tensor(m_row, dtype=torch.long, device=dev),
        torch.tensor(m_pos, dtype=torch.long, device=dev),
        torch.tensor(m_lab, dtype=torch.long, device=dev),
    )


def layer_masks(model, p: Packed) -> torch.Tensor | dict[str, torch.Tensor]:
    """The packed mask, per layer type for models with sliding-window layers (Gemma-2 has one
    in two). transformers uses a 4D mask as given for every layer, so a sliding layer would
    see too far back once a packed row is longer than its window; its mask also hides keys
    whose *position* is a window or more behind the query. Positions, not columns: a block's
    positions continue from its line, so this is the window the unpacked prompt gets."""
    cfg = getattr(model, "config", None)
    window = getattr(cfg, "sliding_window", None)
    if not window or "sliding_attention" not in (getattr(cfg, "layer_types", None) or ()):
        return p.attention_mask
    near = (p.position_ids[:, :, None] - p.position_ids[:, None, :]) < window
    return {"full_attention": p.attention_mask, "sliding_attention": p.attention_mask & near[:, None]}


def packed_hidden(model, p: Packed) -> torch.Tensor:
    """(B, T, d) final-layer states of a packed batch, through the model's own forward."""
    out = model(input_ids=p.input_ids, attention_mask=layer_masks(model, p),
                position_ids=p.position_ids, output_hidden_states=True, logits_to_keep=1,
                use_cache=False)
    return out.hidden_states[-1]
