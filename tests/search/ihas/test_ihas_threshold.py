"""Histogram threshold searcher: valleys, plateaus, fallbacks, vectorisation."""

from __future__ import annotations

import pytest
import torch

from trainer.search.ihas.threshold import HistogramThreshold, bin_counts, first_valley


def row_from_counts(counts: list[int], bins: int) -> torch.Tensor:
    """A row of probabilities whose histogram is exactly `counts` (values at bin centres)."""
    return torch.cat([torch.full((c,), (k + 0.5) / bins) for k, c in enumerate(counts)])


def reference_first_valley(counts: list[int]) -> int | None:
    """Per-row reference of the documented rule, written with explicit runs."""
    runs: list[tuple[int, int]] = []  # (first bin, count)
    for k, c in enumerate(counts):
        if not runs or runs[-1][1] != c:
            runs.append((k, c))
    for r in range(1, len(runs) - 1):
        if runs[r - 1][1] > runs[r][1] < runs[r + 1][1]:
            return runs[r][0]
    return None


@pytest.mark.parametrize(
    "counts, valley_bin",
    [
        ([30, 4, 0, 0, 0, 0, 0, 2, 20, 40], 2),  # polarised: wide empty middle
        ([40, 0, 0, 0, 0, 0, 0, 0, 0, 30], 1),  # modes at the very ends
        ([5, 9, 12, 6, 1, 3, 8, 12, 9, 4], 4),  # two humps, non-empty valley bin
        ([2, 3, 20, 9, 0, 0, 10, 20, 3, 2], 4),  # humps not at the ends
        ([10, 10, 10, 10, 10, 10, 10, 0, 20, 0], 7),  # late valley
        ([0, 0, 12, 0, 0, 9, 0, 0, 0, 0], 3),  # leading empty bins are not a valley
        ([9, 2, 2, 2, 9, 9, 9, 9, 9, 9], 1),  # plateau valley: its first bin
        ([9, 1, 9, 1, 9, 9, 9, 9, 9, 9], 1),  # two valleys: the first one
        ([9, 7, 8, 0, 0, 9, 9, 9, 9, 9], 1),  # literal rule: a shallow first dip wins
    ],
)
def test_finds_first_valley_lower_edge(counts, valley_bin):
    th = HistogramThreshold(bins=10)
    p = row_from_counts(counts, 10).unsqueeze(0)
    assert bin_counts(p, 10).tolist() == [counts]
    assert th.thresholds(p).item() == pytest.approx(valley_bin / 10)
    assert torch.equal(th.mask(p)[0], (p[0] > valley_bin / 10).float())


@pytest.mark.parametrize("valley_bin", range(1, 19))
def test_single_bin_valley_at_every_position(valley_bin):
    counts = [6] * 20
    counts[valley_bin] = 1
    p = row_from_counts(counts, 20).unsqueeze(0)
    assert HistogramThreshold(bins=20).thresholds(p).item() == pytest.approx(valley_bin / 20)


@pytest.mark.parametrize(
    "counts",
    [
        [0, 0, 3, 10, 25, 10, 3, 0, 0, 0],  # unimodal
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],  # increasing
        [10, 9, 8, 7, 6, 5, 4, 3, 2, 1],  # decreasing
        [4, 4, 4, 4, 4, 4, 4, 4, 4, 4],  # flat
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 7],  # everything in one end bin
    ],
)
def test_no_valley_uses_fallback(counts):
    p = row_from_counts(counts, 10).unsqueeze(0)
    assert HistogramThreshold(bins=10).thresholds(p).item() == 0.5
    assert HistogramThreshold(bins=10, fallback=0.25).thresholds(p).item() == 0.25


@pytest.mark.parametrize("value, opened", [(0.9, 1.0), (0.3, 0.0), (0.5, 0.0), (1.0, 1.0), (0.0, 0.0)])
def test_all_equal_probabilities_open_iff_above_half(value, opened):
    p = torch.full((3, 128), value)
    assert torch.equal(HistogramThreshold().mask(p), torch.full_like(p, opened))


def test_single_gate_row_uses_fallback():
    p = torch.tensor([[0.7], [0.2]])
    assert HistogramThreshold().mask(p).flatten().tolist() == [1.0, 0.0]


def test_end_values_fall_into_end_bins():
    p = torch.tensor([[0.0, 0.0999, 0.1, 0.95, 1.0]])
    assert bin_counts(p, 10).tolist() == [[2, 1, 0, 0, 0, 0, 0, 0, 0, 2]]


def test_matches_per_row_reference_on_random_histograms():
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 4, (2000, 12), generator=g)  # small values: many ties and plateaus
    idx, has = first_valley(counts)
    for row, k, h in zip(counts.tolist(), idx.tolist(), has.tolist()):
        ref = reference_first_valley(row)
        assert h == (ref is not None), row
        if h:
            assert k == ref, row


def test_rows_are_independent_in_a_batch():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(64, 128, generator=g) ** 3
    th = HistogramThreshold()
    batched = th.thresholds(p)
    single = torch.cat([th.thresholds(p[i : i + 1]) for i in range(64)])
    assert torch.equal(batched, single)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_counts_stay_exact(dtype):
    counts = [300, 0, 0, 0, 0, 0, 0, 0, 0, 324]  # N* = 624 > bf16's exact-integer range
    p = row_from_counts(counts, 10).to(dtype).unsqueeze(0)
    assert bin_counts(p, 10).tolist() == [counts]
    assert HistogramThreshold().thresholds(p).item() == pytest.approx(0.1, abs=1e-3)


def test_rejects_bad_config_and_shapes():
    with pytest.raises(ValueError):
        HistogramThreshold(bins=2)
    with pytest.raises(ValueError):
        HistogramThreshold(fallback=1.5)
    with pytest.raises(ValueError):
        HistogramThreshold().thresholds(torch.rand(5))


def test_logit_thresholds_open_the_same_gates_as_the_probability_form():
    torch.manual_seed(0)
    # polarised rows, unimodal rows (fallback) and rows of equal logits
    z = torch.cat([torch.randn(300, 64) * 4, torch.randn(100, 64) * 0.3 + 2, torch.zeros(5, 64)])
    t = HistogramThreshold(10, 0.5)
    want = t.mask(torch.sigmoid(z))
    got = (z > t.logit_thresholds(z)[:, None]).to(want.dtype)
    assert torch.equal(got, want)
    assert torch.allclose(torch.sigmoid(t.logit_thresholds(z)), t.thresholds(torch.sigmoid(z)), atol=1e-6)
