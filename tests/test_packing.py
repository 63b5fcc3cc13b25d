"""Packed readouts are exactly the states inference computes, and the warm start's windows
cover every train target once with the prompt's own history."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch

from r2ec.data import Catalog, histories, times
from r2ec.model import R2ec
from r2ec.packing import Readout, Window, pack, packed_hidden
from r2ec.warmstart import user_windows
from tests.conftest import synthetic_catalog

ITEMS, SAMPLES = synthetic_catalog(n_users=12)
CATALOG = Catalog.from_frame(ITEMS)


@pytest.fixture(scope="module")
def r2ec(tiny_model_dir) -> R2ec:
    m = R2ec.load(tiny_model_dir, device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():  # large random weights: differences would show, not wash out
        for p in m.model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return m


def _windows_and_expected(r2ec: R2ec, rng: random.Random):
    hists, refs = histories(SAMPLES), times(SAMPLES["target_ts"])
    windows, expected = [], []
    for h, ref in list(zip(hists, refs, strict=True))[::4]:
        lines = [r2ec.line_ids(x, h[i - 1].ts if i else None) for i, x in enumerate(h)]
        readouts = []
        for j in range(1, len(h) + 1):
            now = h[j].ts if j < len(h) else ref
            extra = [rng.randrange(10, 400) for _ in range(rng.randrange(0, 5))]  # a "reasoning"
            block = r2ec.readout_ids(h[j - 1].ts, now) + extra + [r2ec.answer_id]
            readouts.append(Readout(j, block, 0, lm_from=len(block) - len(extra) - 1))
            expected.append(r2ec.user_prompt(h[:j], now) + extra + [r2ec.answer_id])
        rng.shuffle(readouts)  # the order of blocks after different lines must not matter
        windows.append(Window(r2ec.prefix_ids(), lines, readouts))
    return windows, expected


def test_packed_readouts_equal_inference_states(r2ec):
    windows, expected = _windows_and_expected(r2ec, random.Random(0))
    p = pack(windows, r2ec.tokenizer.pad_token_id)
    assert len(p.readout_rows) == len(expected) > 20
    with torch.no_grad():
        got = packed_hidden(r2ec.model, p)[p.readout_rows, p.readout_pos].numpy()
    # pack emits each window's readouts in line order, whatever order they were given in
    want = r2ec.backend.last_hidden_states(expected)
    assert np.abs(got - want).max() < 1e-5


def test_packed_readouts_respect_a_sliding_window(tmp_path):
    """Gemma-2 alternates sliding-window and global layers; with a window far shorter than the
    packed rows, packed readouts still equal the states of the unpacked prompts."""
    from r2ec import checkpoint
    from r2ec.config import PromptConfig
    from tests.backbones import save_tiny_backbone

    hf = save_tiny_backbone("gemma2", tmp_path / "hf", list(ITEMS["title"]) * 3, sliding_window=16)
    checkpoint.adopt(hf, tmp_path / "m", PromptConfig(item_id_tokens=False))
    gemma = R2ec.load(tmp_path / "m", device="cpu", dtype=torch.float32)
    assert "sliding_attention" in gemma.model.config.layer_types
    windows, expected = _windows_and_expected(gemma, random.Random(2))
    p = pack(windows, gemma.tokenizer.pad_token_id)
    assert p.position_ids.max() > 4 * 16  # the window matters
    with torch.no_grad():
        got = packed_hidden(gemma.model, p)[p.readout_rows, p.readout_pos].numpy()
    want = gemma.backend.last_hidden_states(expected)
    assert np.abs(got - want).max() < 1e-4


def test_packed_lm_labels_are_the_following_tokens(r2ec):
    windows, _ = _windows_and_expected(r2ec, random.Random(1))
    p = pack(windows, r2ec.tokenizer.pad_token_id)
    ids = p.input_ids
    assert len(p.lm_rows) > 0
    assert torch.equal(ids[p.lm_rows, p.lm_pos + 1], p.lm_labels)
    # every label sits inside a readout block: the last label of a block is its <answer>
    assert (p.lm_labels == r2ec.answer_id).sum() == len(p.readout_rows)


def test_windows_cover_every_train_target_once_with_its_history():
    samples = SAMPLES.copy()
    windows = user_windows(samples, CATALOG, window=4, stride=2)
    got = []
    for w in windows:
        for j in w.counted:
            got.append((w.events[j].item_id, w.events[j].ts, tuple(e.item_id for e in w.events[:j])))
    assert len(got) == len(samples)
    want = {(t, pd.Timestamp(ts).to_pydatetime(), tuple(h)) for t, ts, h in
            zip(samples["target_item_id"], samples["target_ts"], samples["history_item_ids"],
                strict=True)}
    for target, ts, lines in got:
        # the packed history is a suffix of the sample's own history (at least window - stride)
        match = [h for t, s, h in want if t == target and s == ts]
        assert match and match[0][-len(lines):] == lines and len(lines) >= min(2, len(match[0]))
