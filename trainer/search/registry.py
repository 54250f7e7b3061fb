"""Search method name → the recipe that runs it end to end.

Adding a method = its package under trainer/search/, its recipe under trainer/jobs/,
one entry here and one tiny config under configs/tiny/.
"""

from __future__ import annotations

import importlib

from trainer.config import ConfigError, read_toml

RECIPES = {
    "ihas": "trainer.jobs.ihas",
    "autodpq": "trainer.jobs.autodpq",
}


def recipe_for(config_path: str, overrides: list[str]):
    """The recipe module named by the config's `search.method`."""
    raw = read_toml(config_path, overrides)
    method = raw.get("search", {}).get("method")
    if method not in RECIPES:
        raise ConfigError(config_path, [f"search.method: {method!r} is not one of {sorted(RECIPES)}"])
    return importlib.import_module(RECIPES[method])
