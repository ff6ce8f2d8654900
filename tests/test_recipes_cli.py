"""Every recipe trained end to end through `distillir train` on tiny random models and the toy datasets, with
the settings of scripts/recipe_smoke.py: the command exits 0, prints its results, and trains bit-identically
to the same config run from Python."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distillir.cli.main import app
from distillir.data.toy import write_toy_beir, write_toy_qa
from distillir.recipes import RECIPES, get_recipe
from distillir.training.config import load_config

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is as fast


def smoke_module():
    spec = importlib.util.spec_from_file_location("recipe_smoke", REPO / "scripts" / "recipe_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, tiny_bert_dir):
    base = tmp_path_factory.mktemp("smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLIR_CACHE", str(base / "cache"))
        module = smoke_module()
        yield base, module, module.settings(tiny_bert_dir, write_toy_beir(base / "beir"), write_toy_qa(base / "qa"))


def test_the_smoke_settings_cover_every_recipe(smoke):
    assert set(smoke[2]) == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_distillir_train_runs_the_recipe_as_python_does(smoke, name):
    base, module, settings = smoke
    cli_out, api_out = base / f"cli-{name}", base / f"api-{name}"
    args = ["train", name, "--defaults", "--set", f"output_dir={cli_out}"]
    for item in settings[name]:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout[result.stdout.index("{"):])
    assert printed["recipe"] == name == json.loads((cli_out / "results.json").read_text())["recipe"]

    recipe = get_recipe(name)
    api = recipe().run(load_config(recipe.Config, None, [f"output_dir={api_out}", *settings[name]]))
    assert module.scrub(printed, str(base)) == module.scrub(json.loads(json.dumps(api, default=str)), str(base))
    cli_weights, api_weights = module.weight_hashes(cli_out), module.weight_hashes(api_out)
    assert cli_weights and cli_weights == api_weights
    # Every run ends with its report (printed last), its training curves plotted.
    assert result.stderr.rstrip().splitlines()[-1] == f"report: {cli_out / 'report.md'}"
    assert (cli_out / "report.md").read_text().startswith(f"# {name} run: ")
    assert (cli_out / "plots" / "training.png").read_bytes()[:4] == b"\x89PNG"
