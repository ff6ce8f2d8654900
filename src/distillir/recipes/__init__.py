"""Training recipes, by name. Each is resolved only when asked for, so listing them imports no torch.

A recipe is a `Recipe` subclass (see `distillir.recipes.common.run`) with a `Config` dataclass; run one with
`distillir train NAME --config file.yaml --set key=value`, or from Python:

    recipe_cls = get_recipe("dpr")
    result = recipe_cls().run(load_config(recipe_cls.Config, "configs/dpr-scifact-cpu.yaml"))
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING

from distillir.errors import ConfigError

if TYPE_CHECKING:
    from distillir.recipes.common.run import Recipe

# name -> "module:Class"; a recipe adds one line here. Recipes in other packages run by that spec directly.
RECIPES: dict[str, str] = {
    "dpr": "distillir.recipes.dpr:DPRRecipe",
    "cross-encoder": "distillir.recipes.cross_encoder:CrossEncoderRecipe",
    "rocketqa-v2": "distillir.recipes.rocketqa_v2:RocketQAv2Recipe",
    "ar2": "distillir.recipes.ar2:AR2Recipe",
    "fid-kd": "distillir.recipes.fid_kd:FiDKDRecipe",
    "re2g": "distillir.recipes.re2g:Re2GRecipe",
    "dgr": "distillir.recipes.dgr:DGRRecipe",
}


def get_recipe(name: str) -> type[Recipe]:
    """The recipe class registered as `name`, or named by a "package.module:Class" spec."""
    spec = RECIPES.get(name)
    if spec is None and ":" in name:
        spec = name
    if spec is None:
        close = difflib.get_close_matches(name, list(RECIPES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown recipe {name!r}{hint} Known recipes: {', '.join(sorted(RECIPES))}")
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ConfigError(f"recipe {name!r}: module {module_name} is not available ({e})") from None
        raise
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise ConfigError(f"recipe {name!r}: {module_name} has no class {class_name}") from None


__all__ = ["RECIPES", "get_recipe"]
