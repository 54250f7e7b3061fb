"""The best cluster purity any router can reach on a search config's synthetic planted groups:
each row's most likely group given its ids under the true generator (uniform prior over
groups, the generator's own Zipf law and permutations). Prints the Bayes accuracy over all rows.

    .venv/bin/python scripts/synthetic_group_ceiling.py --config configs/ihas_synthetic.toml
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import ConfigError  # noqa: E402
from trainer.data.readers.synthetic import SyntheticReader  # noqa: E402
from trainer.jobs.search import load_experiment  # noqa: E402


def zipf_pmf(vocab: int, a: float) -> np.ndarray:
    """P(id) for ids 0..vocab of the generator's bounded Zipf (id 0, out of vocabulary, never drawn)."""
    k = np.arange(1, vocab + 2, dtype=np.float64)
    cdf = (k ** (1 - a) - 1) / ((vocab + 1.0) ** (1 - a) - 1) if abs(a - 1) > 1e-9 else np.log(k) / np.log(vocab + 1.0)
    return np.concatenate([[0.0], np.diff(cdf)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    try:
        data = load_experiment(args.config, []).data
    except (ConfigError, OSError) as e:
        print("; ".join(line.strip(" -") for line in str(e).splitlines()), file=sys.stderr)
        return 2
    if data.source != "synthetic":
        print(f"{args.config}: data.source is {data.source!r}, not 'synthetic'", file=sys.stderr)
        return 2
    reader = SyntheticReader(data.synthetic_params(), threads=1)
    p = reader.params
    chunk = next(reader.iter_chunks(p.rows))
    loglik = np.zeros((len(chunk.labels), p.n_groups))
    for i, vocab in enumerate(reader.vocab_sizes):
        owner = reader._owner[i]
        if owner < 0:
            continue  # a field no group owns is drawn alike by every group
        pmf = zipf_pmf(vocab, p.zipf_a)
        ids = chunk.columns[f"C{i + 1}"]
        drawn_as = np.argsort(reader._perm[i])[ids]  # the Zipf rank the owner's permutation maps to this id
        for g in range(p.n_groups):
            loglik[:, g] += np.log(np.maximum(pmf[drawn_as] if g == owner else pmf[ids], 1e-300))
    accuracy = float((loglik.argmax(axis=1) == chunk.groups).mean())
    print(f"{args.config}: {len(chunk.labels):,} rows, {p.n_groups} groups, Bayes group accuracy {accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
