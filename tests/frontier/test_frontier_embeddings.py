"""The frontier's storage forms: ids map where they say, bags pool exactly, first-order weights follow their rows."""

import torch

from trainer.frontier.embeddings import MappedEmbeddings, QREmbeddings, TwoTierEmbeddings, mix32


def _rows(emb, table):
    return emb.ebc.embedding_bags[table].weight.detach()


def test_mix32_is_a_fixed_spread_into_buckets():
    ids = torch.arange(10_000)
    b = 64
    buckets = mix32(ids) % b
    assert torch.equal(buckets, mix32(ids.clone()) % b)  # no state: training and serving agree
    assert buckets.min() >= 0 and buckets.max() < b
    # the frequent ids (the vocabulary's first ids) collide with each other too, unlike id mod B
    assert len(set(buckets[:b].tolist())) < b
    assert torch.bincount(buckets, minlength=b).min() > 10_000 / b / 2  # every bucket used, none starved


def _first_order(emb, fields):
    """Σ over fields of each row's first-order weight, read row by row from the tables (bags: mean)."""
    total = torch.zeros(8)
    for name, jt in fields.items():
        w = _rows(emb, f"t_{name}")[emb.row_of(name, jt.values()), emb.dim]
        per_row = torch.zeros(8).index_add(0, torch.repeat_interleave(torch.arange(8), jt.lengths()), w)
        total += per_row / jt.lengths().clamp(min=1) if emb.bags[name] else per_row
    return total


def test_hashed_and_others_lookups_read_the_mapped_rows(toy_spec, toy_batch):
    torch.manual_seed(0)
    fields = toy_batch.sparse_features.to_dict()
    x = fields["a"].values()
    hashed = MappedEmbeddings(toy_spec, 4, "hash", 3, first_order=True)
    assert hashed.rows == {"a": 3, "n": 3, "g": 3, "c": 3}  # "c" has 3 ids: it keeps its own rows
    assert hashed.feature("a") == "a:hash" and hashed.feature("c") == "c"
    with torch.no_grad():  # random first-order columns, so the test sees where they are read
        for t in hashed.ebc.embedding_bags.values():
            t.weight.normal_()
    embs, first = hashed.lookup(toy_batch.sparse_features)
    assert torch.allclose(embs[0], _rows(hashed, "t_a")[mix32(x) % 3, :4])
    assert torch.allclose(first, _first_order(hashed, fields), atol=1e-6)

    others = MappedEmbeddings(toy_spec, 4, "others", {"a": 3, "n": 5, "g": 2, "c": 3}, first_order=False)
    assert others.rows == {"a": 4, "n": 5, "g": 3, "c": 3}
    embs, first = others.lookup(toy_batch.sparse_features)
    assert first is None
    assert torch.allclose(embs[0], _rows(others, "t_a")[x.clamp(max=3), :4])


def test_two_tier_rows_pool_exactly_each_id_at_its_tier(toy_spec, toy_batch):
    torch.manual_seed(0)
    n_full = {"a": 3, "n": 5, "g": 2, "c": 3}  # "n" and "c" keep every id at full dim
    emb = TwoTierEmbeddings(toy_spec, 8, 3, n_full, first_order=True)
    with torch.no_grad():  # random first-order columns, so the test sees where they are read
        for t in emb.ebc.embedding_bags.values():
            t.weight.normal_()
    embs, first = emb.lookup(toy_batch.sparse_features)

    def one(name, i):
        """(embedding, first-order weight) of id i of a field, computed alone."""
        if i < n_full[name]:
            row = _rows(emb, f"t_{name}")[i]
            return row[:8], row[8]
        row = _rows(emb, f"l_{name}")[i - n_full[name]]
        return emb.proj[name](row[:3]), row[3]

    want_first = torch.zeros(8)
    for k, (name, jt) in enumerate(toy_batch.sparse_features.to_dict().items()):
        start = 0
        for row, n in enumerate(jt.lengths().tolist()):
            parts = [one(name, i) for i in jt.values()[start:start + n].tolist()]
            start += n
            e = torch.stack([p[0] for p in parts]).mean(0) if parts else torch.zeros(8)  # bags (here "g") are means
            w = torch.stack([p[1] for p in parts]).mean() if parts else torch.tensor(0.0)
            assert torch.allclose(embs[k][row], e, atol=1e-6), (name, row)
            want_first[row] += w
    assert torch.allclose(first, want_first, atol=1e-5)
    assert set(emb.proj) == {"a", "g"} and "l_c" not in emb.ebc.embedding_bags


def test_quotient_remainder_rows_combine_as_computed_by_hand(toy_spec, toy_batch):
    torch.manual_seed(0)
    emb = QREmbeddings(toy_spec, 4, 3, first_order=True)
    sizes = {f.name: f.num_embeddings for f in toy_spec.fields}
    assert emb.mapped == {n: v > 3 for n, v in sizes.items()}
    for n, v in sizes.items():  # ⌈V / B⌉ quotient rows and B remainder rows, or the field's own rows
        tables = {k: t.weight.shape[0] for k, t in emb.ebc.embedding_bags.items() if k.endswith(f"_{n}")}
        assert tables == ({f"q_{n}": -(-v // 3), f"r_{n}": 3} if v > 3 else {f"t_{n}": v})
    with torch.no_grad():  # random first-order columns too, so the test sees where they are read
        for t in emb.ebc.embedding_bags.values():
            t.weight.normal_()
    embs, first = emb.lookup(toy_batch.sparse_features)
    fields = toy_batch.sparse_features.to_dict()
    want_first = torch.zeros(8)
    for i, (name, jt) in enumerate(fields.items()):
        rows = torch.repeat_interleave(torch.arange(8), jt.lengths())
        x = jt.values()
        if emb.mapped[name]:
            q, r = _rows(emb, f"q_{name}")[x // 3], _rows(emb, f"r_{name}")[x % 3]
            per_id = q[:, :4] + r[:, :4] if emb.bags[name] else q[:, :4] * r[:, :4]
            w = q[:, 4] + r[:, 4]
        else:
            row = _rows(emb, f"t_{name}")[x]
            per_id, w = row[:, :4], row[:, 4]
        count = jt.lengths().clamp(min=1).float() if emb.bags[name] else torch.ones(8)
        want = torch.zeros(8, 4).index_add(0, rows, per_id) / count[:, None]
        assert torch.allclose(embs[i], want, atol=1e-6), name
        want_first += torch.zeros(8).index_add(0, rows, w) / count
    assert torch.allclose(first, want_first, atol=1e-6)
    # two ids of one field never read the same (quotient, remainder) pair
    ids = torch.arange(sizes["a"])
    assert len({(int(i) // 3, int(i) % 3) for i in ids}) == sizes["a"]
