"""Query-guided budgets: per-frame relevance → per-frame budget → a per-frame selector."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vtc
from vtc.errors import UsageError
from vtc.stages.budget import apportion, relevance_budget


def test_apportion_sums_and_caps() -> None:
    c = apportion(torch.tensor([1.0, 0.0, 3.0, 100.0]), 30, cap=10)
    assert int(c.sum()) == 30 and int(c.max()) <= 10 and int(c.min()) >= 1
    assert c[3] == 10 and c[2] > c[0]


def test_budget_follows_planted_relevance() -> None:
    rel = torch.full((16,), 0.1)
    rel[5] = rel[6] = 0.3  # the frames that match the query
    counts = relevance_budget(rel, tokens_per_frame=196, ratio=0.1)
    assert int(counts.sum()) == round(0.1 * 16 * 196)
    assert counts[5] == counts[6] == counts.max() and counts[0] < counts[5]


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_query_end_to_end(kind: str, clip_path: Path, model_args, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "q.safetensors"
    vtc.compress(clip_path, output=out, method="budgeted", params={"budget": "query"}, ratio=0.3, frames=8,
                 query="a white square", **model_args(kind))
    f = vtc.load(out)
    rel = f["relevance"]
    per = f.tokens_per_frame().float()
    assert rel.shape == (8,) and f.meta["query"] == "a white square"
    assert "cosine" in f.meta["signals"]["relevance"]
    assert per[int(rel.argmax())] >= per[int(rel.argmin())]  # the best match gets at least as many tokens
    assert f.meta["info"]["budget"] == "query"


def test_query_needs_a_query_aware_method(clip_path: Path, model_args, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(UsageError, match="query-aware"):
        vtc.compress(clip_path, output=tmp_path / "o.safetensors", method="pool", query="x", **model_args("clip"))


def test_budgeted_audio_and_fallback(silent_clip: Path, model_args, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "a.safetensors"
    vtc.compress(silent_clip, output=out, preset="audio-diversity", frames=6, **model_args("clip"))
    f = vtc.load(out)
    assert f.meta["info"]["budget"] == "uniform (no audio signal)"
