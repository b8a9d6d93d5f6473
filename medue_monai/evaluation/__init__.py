"""Exploiter training, efficacy and invisibility metrics, learning curves and reports."""

from .classification import train_exploiter
from .invisibility import budget_metrics, hash_similarity, invisibility_metrics
from .plots import plot_learning_curves
from .recipes import get_recipe, recipe_names

__all__ = [
    "budget_metrics",
    "get_recipe",
    "hash_similarity",
    "invisibility_metrics",
    "plot_learning_curves",
    "recipe_names",
    "train_exploiter",
]
