"""Model resolution, fingerprints and sentence-transformers pooling configs."""

from __future__ import annotations

import json
import shutil

import pytest

from distillir.errors import ConfigError, InputError
from distillir.models import (
    DEFAULT_ENCODER,
    local_model_dir,
    model_fingerprint,
    read_pooling_config,
    resolve_model,
)


def test_local_directory_is_returned_as_is(tmp_path):
    assert resolve_model(tmp_path) == str(tmp_path)


def test_default_hub_id_resolves_to_packaged_copy(minilm_path):
    assert DEFAULT_ENCODER == "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_model(DEFAULT_ENCODER) == minilm_path
    assert resolve_model("all-MiniLM-L6-v2") == minilm_path


def test_other_hub_ids_pass_through_unchanged():
    assert resolve_model("facebook/contriever") == "facebook/contriever"


def test_unreachable_hub_id_is_a_clear_input_error():
    with pytest.raises(InputError, match="could not be fetched"):
        local_model_dir("distillir-test/no-such-model")


def test_fingerprint_covers_weights_and_config_not_readme(tiny_bert_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, copy)
    original = model_fingerprint(copy)
    assert model_fingerprint(tiny_bert_dir) == original  # file names and bytes, not the directory

    (copy / "README.md").write_text("notes")
    assert model_fingerprint(copy) == original

    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert model_fingerprint(copy) != original

    shutil.copy(tiny_bert_dir + "/model.safetensors", weights)
    config = json.loads((copy / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6
    (copy / "config.json").write_text(json.dumps(config))
    assert model_fingerprint(copy) != original


def test_fingerprint_needs_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match="no model weights"):
        model_fingerprint(tmp_path)


def test_pooling_config_of_minilm(minilm_path):
    conf = read_pooling_config(minilm_path)
    assert (conf.pooling, conf.normalize, conf.max_seq_length) == ("mean", True, 256)


def test_plain_hf_model_has_no_pooling_config(tiny_bert_dir):
    assert read_pooling_config(tiny_bert_dir) is None


def _write_st_files(directory, pooling_flags, normalize=False):
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling_flags))


def test_cls_pooling_config(tmp_path):
    _write_st_files(tmp_path, {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    conf = read_pooling_config(tmp_path)
    assert (conf.pooling, conf.normalize, conf.max_seq_length) == ("cls", False, None)


def test_unsupported_pooling_is_refused(tmp_path):
    _write_st_files(tmp_path, {"pooling_mode_max_tokens": True})
    with pytest.raises(ConfigError, match="max_tokens"):
        read_pooling_config(tmp_path)
