"""Named exploiter recipes, stored as data in ``recipes.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..utils import MedueError

__all__ = ["RECIPES_FILE", "get_recipe", "recipe_names"]

RECIPES_FILE = Path(__file__).with_name("recipes.yaml")


def _load() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(RECIPES_FILE.read_text())


def recipe_names(task: str | None = None) -> list[str]:
    """Names of the recipes, optionally only those of one task."""
    return [name for name, r in _load().items() if task is None or r["task"] == task]


def get_recipe(name: str, **overrides: Any) -> dict[str, Any]:
    """Return a copy of a named recipe with ``None``-free overrides applied (e.g. ``epochs``).

    Raises:
        MedueError: for an unknown recipe name.
    """
    recipes = _load()
    if name not in recipes:
        raise MedueError(f"unknown recipe {name!r}; choose from {', '.join(recipes)}")
    recipe = dict(recipes[name], name=name)
    recipe.update({k: v for k, v in overrides.items() if v is not None})
    return recipe
