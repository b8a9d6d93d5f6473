"""Named exploiter recipes, stored as data in ``recipes.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..transforms.defenses import check_defense
from ..utils import MedueError
from .hardening import training_counter_measures

__all__ = [
    "COUNTER_MEASURE_DEFAULTS",
    "RECIPES_FILE",
    "check_clean_run",
    "check_counter_measures",
    "counter_measures",
    "get_recipe",
    "recipe_names",
]

#: what a run recorded before a counter-measure existed had: none of them.
COUNTER_MEASURE_DEFAULTS: dict[str, Any] = {"defense": "none", **training_counter_measures({})}

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


def counter_measures(recipe: dict[str, Any]) -> dict[str, Any]:
    """Every exploiter-side counter-measure a recipe asks for, validated, with defaults filled in.

    Args:
        recipe: a recipe from :func:`get_recipe` (overrides applied).

    Returns:
        ``{"defense", "augmentation", "adversarial_eps", "adversarial_steps", "adversarial_step_size"}``: the
        file-level defense (:mod:`medue_monai.transforms.defenses`) and the training-time ones
        (:mod:`medue_monai.evaluation.hardening`).

    Raises:
        MedueError: for an unknown defense or augmentation, or adversarial settings out of range.
    """
    return {"defense": check_defense(recipe.get("defense")), **training_counter_measures(recipe)}


def check_counter_measures(run: dict[str, Any], expected: dict[str, Any], what: str = "clean_run") -> None:
    """Refuse to reuse an exploiter run trained under other counter-measures than ``expected``.

    Args:
        run: the earlier run (keys it lacks count as :data:`COUNTER_MEASURE_DEFAULTS`).
        expected: :func:`counter_measures` of this evaluation.
        what: how the error names the run.

    Raises:
        MedueError: naming the first counter-measure that differs.
    """
    for key, value in expected.items():
        earlier = run.get(key, COUNTER_MEASURE_DEFAULTS.get(key))
        if earlier != value:
            raise MedueError(f"{what} was trained with {key} {earlier!r}, this evaluation uses {value!r}")


def check_clean_run(
    run: dict[str, Any],
    *,
    score: str,
    epochs: int,
    exploiter: str,
    counter: dict[str, Any],
    split_sha256: str | None = None,
) -> None:
    """Refuse to reuse a clean-trained run that is not the one this evaluation would train.

    Args:
        run: the earlier clean-trained run (``clean_run`` of the evaluations: its scores, ``curves`` and,
            where recorded, ``exploiter``, ``split_sha256`` and the counter-measures).
        score: the per-epoch curve that counts the epochs (``"test_accuracy"``, ``"test_dice"``).
        epochs: this evaluation's number of epochs.
        exploiter: this evaluation's exploiter network.
        counter: :func:`counter_measures` of this evaluation.
        split_sha256: this evaluation's train/test split, where the task has one of its own.

    Raises:
        MedueError: for another number of epochs, another exploiter network, another split or other
            counter-measures. A run recorded before a field existed is not checked on that field.
    """
    trained_epochs = len(run.get("curves", {}).get(score, []))
    if trained_epochs != int(epochs):
        raise MedueError(f"clean_run was trained for {trained_epochs} epochs, this evaluation uses {epochs}")
    earlier = run.get("exploiter")
    if earlier is not None and earlier != exploiter:
        raise MedueError(f"clean_run was trained with exploiter {earlier!r}, this evaluation uses {exploiter!r}")
    if split_sha256 is not None and run.get("split_sha256", split_sha256) != split_sha256:
        raise MedueError("clean_run was trained on another train/test split than this evaluation's")
    check_counter_measures(run, counter)
