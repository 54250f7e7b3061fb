"""Writes configs/data/ads_small.csv, the small CSV behind configs/table_example.toml.

    .venv/bin/python scripts/make_table_example.py

Deterministic (Python's `random` with a fixed seed, drawing only `random()`, whose
sequence is stable across Python versions), so the committed file can be regenerated
byte for byte. Clicks follow a planted logistic model of the columns, so a model trained
on the file scores a validation AUC clearly above 0.5.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "configs" / "data" / "ads_small.csv"
ROWS = 3000
DEVICES = ("mobile", "desktop", "tablet")
TOPICS = ("sport", "news", "music", "travel", "food", "tech")


def row(rng: random.Random) -> list[str]:
    """One impression: user, ad, device, visits, price, age, topics, clicked ("yes"/"no")."""
    user = int(200 * rng.random() ** 2)  # a few heavy users, a long tail
    ad = int(40 * rng.random())
    device = DEVICES[int(3 * rng.random())]
    visits = int(math.exp(6 * rng.random())) - 1  # heavy-tailed counts: the "log" encoding's case
    price = round(math.exp(1 + 4 * rng.random()), 2)  # skewed prices: "quantile"
    age = "" if rng.random() < 0.1 else str(int(18 + 50 * rng.random()))  # roughly uniform: "raw"
    topics = [t for t in TOPICS if rng.random() < 0.3]
    logit = (
        -1.0 + 0.8 * (device == "mobile") + 0.25 * math.log1p(visits) - 0.6 * (price > 40)
        + (0.03 * (40 - int(age)) if age else 0.0) + 0.7 * ("sport" in topics) + (0.8 if ad % 5 == 0 else 0.0)
        + (0.6 if user % 7 == 0 else 0.0)
    )  # fmt: skip
    clicked = "yes" if rng.random() < 1 / (1 + math.exp(-logit)) else "no"
    return [f"u{user}", f"a{ad}", device, str(visits), f"{price:.2f}", age, "|".join(topics), clicked]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rng = random.Random(0)
    lines = ["user,ad,device,visits,price,age,topics,clicked"] + [",".join(row(rng)) for _ in range(ROWS)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} ({ROWS} rows)")


if __name__ == "__main__":
    main()
