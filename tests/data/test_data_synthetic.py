"""The synthetic generator: deterministic, Criteo-shaped, with groups that really differ
in which fields carry the click signal."""

import numpy as np
import pytest

from trainer.data.readers.synthetic import BLOCK, SyntheticParams, SyntheticReader


def concat(reader, chunk_rows):
    chunks = list(reader.iter_chunks(chunk_rows))
    assert all(len(c) <= chunk_rows for c in chunks)
    cols = {k: np.concatenate([c.columns[k] for c in chunks]) for k in chunks[0].columns}
    return np.concatenate([c.labels for c in chunks]), cols, np.concatenate([c.groups for c in chunks])


def test_deterministic_and_independent_of_chunking():
    p = SyntheticParams(rows=BLOCK + 1234, n_categorical=6, n_numerical=2, signal_fields_per_group=2, seed=7)
    a = concat(SyntheticReader(p, threads=1), 5000)
    b = concat(SyntheticReader(p, threads=2), 1 << 16)
    assert a[0].tobytes() == b[0].tobytes() and a[2].tobytes() == b[2].tobytes()
    assert all(a[1][k].tobytes() == b[1][k].tobytes() for k in a[1])
    c = concat(SyntheticReader(SyntheticParams(**{**p.__dict__, "seed": 8})), 5000)
    assert c[1]["C1"].tobytes() != a[1]["C1"].tobytes()
    assert (
        SyntheticReader(p).fingerprint() != SyntheticReader(SyntheticParams(**{**p.__dict__, "seed": 8})).fingerprint()
    )


def test_shape_vocab_and_ctr():
    p = SyntheticParams(rows=50_000, vocab_min=5, vocab_max=5000, seed=1)
    r = SyntheticReader(p)
    decls = r.fields()
    assert [d.name for d in decls] == [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    assert all(5 <= v <= 5000 for v in r.vocab_sizes) and max(r.vocab_sizes) / min(r.vocab_sizes) > 10
    labels, cols, groups = concat(r, 1 << 14)
    assert 0.2 < labels.mean() < 0.3
    assert set(np.unique(groups)) == {0, 1} and abs((groups == 0).mean() - 0.5) < 0.02
    for d, v in zip(decls[13:], r.vocab_sizes):
        ids = cols[d.name]
        assert d.num_ids == v + 1 and ids.min() >= 1 and ids.max() <= v
    # Zipf: the most frequent id of a large field is far above uniform.
    big = int(np.argmax(r.vocab_sizes))
    counts = np.bincount(cols[f"C{big + 1}"])
    assert counts.max() > 50 * len(labels) / r.vocab_sizes[big]
    x = cols["I1"]
    assert x.dtype == np.float32 and np.isnan(x).any() and np.nanmin(x) >= 0


def _target_encoding_auc(ids, y, half):
    """AUC on the second half of a per-id click rate fitted on the first half."""
    fit, ev = slice(0, half), slice(half, None)
    size = ids.max() + 1
    pos = np.bincount(ids[fit], weights=y[fit], minlength=size)
    cnt = np.bincount(ids[fit], minlength=size)
    prior = y[fit].mean()
    score = ((pos + 10 * prior) / (cnt + 10))[ids[ev]]
    return _auc(score, y[ev])


def _auc(score, y):
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    for v in np.unique(score):  # average ranks of ties
        tie = score == v
        ranks[tie] = ranks[tie].mean()
    n_pos = y.sum()
    return (ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(y) - n_pos))


def test_groups_differ_in_which_fields_carry_signal():
    p = SyntheticParams(
        rows=120_000, n_categorical=8, n_numerical=1, vocab_min=50, vocab_max=500, signal_fields_per_group=2
    )
    r = SyntheticReader(p)
    labels, cols, groups = concat(r, 1 << 16)
    assert len(r.signal_fields) == 2 and not set(r.signal_fields[0]) & set(r.signal_fields[1])
    for g in range(2):
        rows = groups == g
        y = labels[rows]
        for name in [f"C{i}" for i in range(1, 9)]:
            auc = _target_encoding_auc(cols[name][rows], y, len(y) // 2)
            if name in r.signal_fields[g]:
                assert auc > 0.6, (g, name, auc)
            else:
                assert auc < 0.53, (g, name, auc)
    # The group is visible in the features through its signal fields only: there the two
    # groups' most frequent ids differ; elsewhere they coincide.
    for names in r.signal_fields:
        for name in names:
            top = [np.bincount(cols[name][groups == h]).argmax() for h in range(2)]
            assert top[0] != top[1]
    plain = next(f"C{i}" for i in range(1, 9) if all(f"C{i}" not in s for s in r.signal_fields))
    assert np.bincount(cols[plain][groups == 0]).argmax() == np.bincount(cols[plain][groups == 1]).argmax()


def test_params_validation():
    assert SyntheticParams().problems() == []
    bad = SyntheticParams(rows=0, vocab_min=10, vocab_max=5, zipf_a=0, n_groups=4, signal_fields_per_group=7)
    text = " ".join(bad.problems())
    for key in ("rows", "vocab_min", "zipf_a", "signal_fields_per_group"):
        assert key in text
    with pytest.raises(ValueError, match="synthetic params"):
        SyntheticReader(bad)


def test_planted_interactions_are_recorded_and_carry_signal():
    base = SyntheticParams(rows=60_000, n_categorical=8, n_numerical=0, vocab_max=50, n_groups=1,
                           signal_fields_per_group=1, seed=3)
    planted = SyntheticParams(**{**base.__dict__, "interactions_2": 2, "interactions_3": 1})
    plain, with_inter = SyntheticReader(base, threads=1), SyntheticReader(planted, threads=1)
    # off by default: no tuples, and the fingerprint (so the cache) of data without them is unchanged
    assert plain.planted()["interactions"] == [] and '"interactions_2"' not in plain.fingerprint()
    tuples = with_inter.planted()["interactions"]
    assert [len(t) for t in tuples] == [2, 2, 3] and len({frozenset(t) for t in tuples}) == 3
    assert all(len(set(t)) == len(t) for t in tuples)
    assert tuples == SyntheticReader(planted, threads=1).planted()["interactions"]  # deterministic per seed
    y0, cols0, _ = concat(plain, 1 << 16)
    y1, cols1, _ = concat(with_inter, 1 << 16)
    assert all(cols0[k].tobytes() == cols1[k].tobytes() for k in cols0)  # same ids: only the labels move
    # each planted tuple's product term separates clicks (CTR of its top vs bottom quartile of
    # rows) far more than in the same rows without planting (where a tuple field may still
    # carry the additive field signal)
    for names, factors in zip(tuples, with_inter._factors):
        term = np.prod([u[cols1[n]] for n, u in zip(names, factors)], axis=0)
        lo, hi = np.quantile(term, [0.25, 0.75])
        gap = lambda y: y[term >= hi].mean() - y[term <= lo].mean()  # noqa: E731
        assert gap(y1) > gap(y0) + 0.05, (names, gap(y1), gap(y0))


def test_too_many_planted_interactions_are_refused():
    text = " ".join(SyntheticParams(n_categorical=3, interactions_2=4, interactions_3=-1).problems())
    assert "interactions_2" in text and "interactions_3" in text


def test_numerical_signal_is_off_by_default_and_only_moves_the_labels():
    p = SyntheticParams(rows=20000, n_categorical=4, n_numerical=3, signal_fields_per_group=2, seed=3)
    off = concat(SyntheticReader(p, threads=1), 20000)
    on_params = SyntheticParams(**{**p.__dict__, "numerical_signal": 1.5})
    on, again = (concat(SyntheticReader(on_params, threads=t), 20000) for t in (1, 2))
    # off: the fingerprint (hence every cache key and resume check) reads as before the option existed
    assert "numerical_signal" not in SyntheticReader(p).fingerprint()
    assert SyntheticReader(on_params).fingerprint() != SyntheticReader(p).fingerprint()
    assert all(off[1][k].tobytes() == on[1][k].tobytes() for k in off[1]) and off[2].tobytes() == on[2].tobytes()
    assert on[0].tobytes() == again[0].tobytes() and on[0].tobytes() != off[0].tobytes()
    # the clicks follow the planted effect of the values: rows with a high total effect click more
    reader = SyntheticReader(on_params)
    effect = sum(reader.numerical_effect(i, on[1][f"I{i + 1}"]) for i in range(3))
    high = effect > np.median(effect)
    assert on[0][high].mean() > on[0][~high].mean() + 0.1
    # non-linear: the effect of one field is not monotone in its value
    x = np.arange(0, 2000, dtype=np.float32)
    steps = np.sign(np.diff(reader.numerical_effect(0, x)))
    assert (steps > 0).any() and (steps < 0).any()


def test_pure_interactions_carry_no_lower_order_signal():
    params = SyntheticParams(rows=200_000, n_categorical=6, n_numerical=0, vocab_max=40, n_groups=1,
                             signal_fields_per_group=1, interactions_2=1, interactions_3=1, seed=5)
    skewed = SyntheticReader(params, threads=1)
    pure = SyntheticReader(SyntheticParams(**{**params.__dict__, "pure_interactions": True}), threads=1)
    assert '"pure_interactions"' not in skewed.fingerprint() and '"pure_interactions"' in pure.fingerprint()
    assert pure.planted() == skewed.planted()
    _, cols, _ = concat(pure, 1 << 16)
    for names, fs_pure in zip(pure.interactions, pure._factors):
        for name, u_pure in zip(names, fs_pure):
            i = int(name[1:]) - 1
            q = pure.id_distribution(i)
            # the analytic id distribution is the generator's: the ids' frequencies match it
            # within 4 binomial standard errors of 200k draws
            freq = np.bincount(cols[name], minlength=len(q)) / params.rows
            assert np.all(np.abs(freq - q) <= 4 * np.sqrt(q * (1 - q) / params.rows) + 1e-12)
            # standardised on that distribution (float32 storage: ~1e-6)
            assert abs(q @ u_pure) < 1e-5 and abs(q @ u_pure.astype(np.float64) ** 2 - 1) < 1e-5
    # a triple's pair, averaged over its third field, is flat: the mean of the triple's term
    # given the pair's ids is 0 for the pure factors (float32: < 1e-5), not for the skewed ones
    triple = next(k for k, t in enumerate(pure.interactions) if len(t) == 3)
    names = pure.interactions[triple]
    q_last = pure.id_distribution(int(names[2][1:]) - 1)
    for reader in (pure, skewed):
        u = reader._factors[triple]
        pair_mean = np.outer(u[0], u[1]) * float(q_last @ u[2])
        assert np.abs(pair_mean).max() < 1e-5 if reader is pure else np.abs(pair_mean).max() > 1e-3


def test_rank_r_interactions_are_inner_products_of_r_wide_factors():
    base = SyntheticParams(rows=60_000, n_categorical=6, n_numerical=0, vocab_max=50, n_groups=1,
                           signal_fields_per_group=1, interactions_2=1, seed=4)
    scalar = SyntheticReader(base, threads=1)
    wide = SyntheticReader(SyntheticParams(**{**base.__dict__, "interaction_rank": 8}), threads=1)
    # rank 1 is the default and reads as before the option existed (fingerprint, so caches)
    assert '"interaction_rank"' not in scalar.fingerprint() and '"interaction_rank": 8' in wide.fingerprint()
    assert wide.planted() == scalar.planted()
    (a, b), (u_a, u_b) = wide.interactions[0], wide._factors[0]
    assert u_a.shape == (wide.vocab_sizes[int(a[1:]) - 1] + 1, 8) and u_b.shape[1] == 8
    y, cols, _ = concat(wide, 1 << 16)
    # the planted term is the factors' inner product: rows whose inner product is high click
    # more than rows whose is low (the scalar product of any one column separates far less)
    inner = (u_a[cols[a]] * u_b[cols[b]]).sum(axis=1)
    one = u_a[cols[a], 0] * u_b[cols[b], 0]
    gap = lambda term: y[term >= np.quantile(term, 0.75)].mean() - y[term <= np.quantile(term, 0.25)].mean()  # noqa: E731
    assert gap(inner) > 0.15 and gap(inner) > 2 * gap(one)
    assert "interaction_rank" in " ".join(SyntheticParams(interaction_rank=0).problems())
