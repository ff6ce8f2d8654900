"""Recipe configs: YAML + --set overrides into checked dataclasses, with errors that point at the mistake."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from distillir.errors import ConfigError
from distillir.training.arguments import TrainConfig
from distillir.training.config import config_diff, config_from_dict, config_to_dict, load_config, save_config


@dataclass
class Eval:
    dataset: str
    split: str = "test"
    ks: list[int] = field(default_factory=lambda: [1, 5])


@dataclass
class Demo:
    output_dir: str = "runs/demo"
    seed: int = 13
    model: str = "m"
    temperature: float | None = None
    rank_range: tuple[int, int] = (0, 100)
    mode: Literal["fast", "slow"] = "fast"
    trainer: TrainConfig = field(default_factory=TrainConfig)
    eval: Eval | None = None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_and_overrides_fill_nested_dataclasses(tmp_path):
    path = write(tmp_path, "seed: 7\ntrainer:\n  learning_rate: 2e-5\n  max_steps: 10\neval:\n  dataset: scifact\n")
    cfg = load_config(Demo, path, ["trainer.max_steps=3", "eval.ks=[1,10]", "rank_range=[5, 50]", "temperature=0.05"])
    assert cfg.seed == 7
    assert cfg.trainer.learning_rate == 2e-5  # PyYAML reads "2e-5" as a string; a float field accepts it
    assert cfg.trainer.max_steps == 3
    assert cfg.eval == Eval("scifact", "test", [1, 10])
    assert cfg.rank_range == (5, 50)
    assert cfg.temperature == 0.05


def test_defaults_without_yaml_and_override_creating_a_section():
    cfg = load_config(Demo, None, ["eval.dataset=squad-open", "eval.split=dev"])
    assert cfg.eval == Eval("squad-open", "dev")
    assert cfg.trainer == TrainConfig()


def test_unknown_key_names_file_line_and_close_match(tmp_path):
    path = write(tmp_path, "seed: 1\ntrainer:\n  max_steps: 10\n  learnig_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(Demo, path)
    msg = str(e.value)
    assert f"{path}, line 4" in msg
    assert "'trainer.learnig_rate'" in msg and "did you mean 'trainer.learning_rate'" in msg


def test_unknown_override_key_names_the_override():
    with pytest.raises(ConfigError, match=r"--set trainer\.max_step=3: unknown key 'trainer\.max_step'.*max_steps"):
        load_config(Demo, None, ["trainer.max_step=3"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("seed=abc", "seed: expected an integer, got 'abc'"),
        ("trainer.learning_rate=fast", "expected a number"),
        ("mode=medium", "expected one of 'fast', 'slow'"),
        ("model=3", "expected a string"),
        ("trainer=5", "expected a mapping for section 'trainer'"),
        ("rank_range=[1,2,3]", "expected a list of 2 values"),
        ("eval={dataset: s, ks: [1, x]}", "eval.ks[1]: expected an integer"),
        ("trainer.max_steps=0", "max_steps must be at least 1"),  # __post_init__ checks, located
        ("trainer.mixed_precision=fp8", "one of 'no', 'bf16', 'fp16', 'auto', 'native'"),
        ("seed", "expected KEY=VALUE"),
    ],
)
def test_wrong_values_say_what_was_expected(override, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace(".", r"\.")):
        load_config(Demo, None, [override])


def test_a_range_check_names_the_override_or_the_line_that_set_the_key(tmp_path):
    path = write(tmp_path, "seed: 1\ntrainer:\n  max_steps: 10\n  attention_dropout: 1.5\n")
    with pytest.raises(ConfigError, match=rf"{path}, line 4: trainer: attention_dropout must be in"):
        load_config(Demo, path)
    with pytest.raises(ConfigError, match=r"^--set trainer\.attention_dropout=2: trainer: attention_dropout must"):
        load_config(Demo, path, ["trainer.attention_dropout=2"])
    with pytest.raises(ConfigError, match=rf"^{path}, line 2: trainer: warmup_ratio must be in"):  # its own line
        load_config(Demo, write(tmp_path, "trainer:\n  warmup_ratio: 1.5\n"), ["trainer.max_steps=3"])


def test_wrong_type_in_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "trainer:\n  per_device_batch_size: true\n")
    with pytest.raises(ConfigError, match=rf"{path}, line 2: trainer.per_device_batch_size: expected an integer"):
        load_config(Demo, path)


def test_missing_required_key(tmp_path):
    path = write(tmp_path, "eval:\n  split: dev\n")
    with pytest.raises(ConfigError, match=r"line 1: missing required key 'eval.dataset'"):
        load_config(Demo, path)


def test_duplicate_key_and_bad_yaml_are_located(tmp_path):
    with pytest.raises(ConfigError, match=r"line 3: duplicate key 'seed' \(first given on line 1\)"):
        load_config(Demo, write(tmp_path, "seed: 1\nmodel: x\nseed: 2\n"))
    with pytest.raises(ConfigError, match=r"c.yaml, line \d+: invalid YAML"):
        load_config(Demo, write(tmp_path, "seed: 1\nmodel: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Demo, write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(Demo, tmp_path / "nope.yaml")


def test_round_trip_through_saved_yaml(tmp_path):
    cfg = load_config(Demo, None, ["eval.dataset=scifact", "trainer.max_grad_norm=null"])
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    data = yaml.safe_load(path.read_text())
    assert data["rank_range"] == [0, 100] and data["trainer"]["max_grad_norm"] is None
    assert config_from_dict(Demo, data) == cfg
    assert load_config(Demo, path) == cfg
    assert config_diff(config_to_dict(cfg), {**config_to_dict(cfg), "seed": 1}) == ["seed"]


def test_training_seed_overrides_the_run_seed_for_training_only(tmp_path):
    from distillir.training.arguments import TrainConfig, TrainingArguments

    assert TrainingArguments.from_config(TrainConfig(), output_dir=tmp_path, seed=42).seed == 42
    args = TrainingArguments.from_config(TrainConfig(training_seed=7), output_dir=tmp_path, seed=42)
    assert args.seed == 7 and args.training_seed == 7
    with pytest.raises(ConfigError, match="training_seed must be in"):
        TrainConfig(training_seed=-1)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_run_seed_outside_numpys_range_is_refused_before_the_run_directory(tmp_path, seed):
    from distillir.recipes import get_recipe

    recipe = get_recipe("dpr")
    config = recipe.load_config(None, [f"output_dir={tmp_path / 'run'}", f"seed={seed}"])
    with pytest.raises(ConfigError, match=r"seed must be in \[0, 2\*\*32\)"):
        recipe().run(config)
    assert not (tmp_path / "run").exists()
