"""A bi-encoder on disk: its settings file (distillir_encoder.json), how settings are read back (or taken from
sentence-transformers' pooling files), and the files `BiEncoder.save_pretrained` writes, sentence-transformers'
module files included, so a saved shared encoder loads in distillir, sentence-transformers and transformers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillir.errors import ConfigError
from distillir.models import read_pooling_config
from distillir.utils.io import write_json

if TYPE_CHECKING:  # annotations only: the encoder module imports this one
    from distillir.retrievers.dense.encoder import BiEncoder

SETTINGS_FILE = "distillir_encoder.json"
ENCODER_FORMAT = 1
POOLINGS = ("mean", "cls")
PASSAGE_INPUT = "pair(title, text)"  # see the module docstring


@dataclass(frozen=True)
class EncoderSettings:
    """Everything besides weights and vocabulary that decides an embedding (saved in distillir_encoder.json).

    `scale` multiplies every similarity: 1/temperature, or 1/sqrt(dim) for a sqrt(d)-scaled dot product.
    """

    shared: bool = True
    pooling: str = "mean"
    normalize: bool = False
    scale: float = 1.0
    query_max_length: int = 64
    passage_max_length: int = 256

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.query_max_length < 2 or self.passage_max_length < 2:
            raise ConfigError("query_max_length and passage_max_length must be at least 2 tokens")
        if not self.scale > 0:
            raise ConfigError(f"scale must be positive, got {self.scale}")




def read_settings(directory: Path, **overrides: Any) -> EncoderSettings:
    """The settings of the model in `directory` (distillir_encoder.json if present, else the sentence-transformers
    pooling files, else mean pooling, unnormalised), with the `overrides` that are not None applied."""
    defaults: dict[str, Any] = {}
    saved = directory / SETTINGS_FILE
    if saved.is_file():
        stored = json.loads(saved.read_text(encoding="utf-8"))
        defaults = {
            k: v for k, v in stored.get("settings", {}).items() if k in EncoderSettings.__dataclass_fields__
        }
    else:
        st = read_pooling_config(directory)
        if st is not None:
            defaults = {"pooling": st.pooling, "normalize": st.normalize}
            if st.max_seq_length:
                defaults["passage_max_length"] = int(st.max_seq_length)
    return EncoderSettings(**{**defaults, **{k: v for k, v in overrides.items() if v is not None}})


def write_encoder_files(encoder: BiEncoder, directory: Path) -> None:
    """The files of `save_pretrained`, into a directory being assembled (e.g. an index's encoder/)."""
    directory = Path(directory)
    if encoder.shared:
        encoder.query_model.save_pretrained(directory)
        write_sentence_transformers_files(encoder, directory)
    else:
        for sub, tower in (("query", encoder.query_model), ("passage", encoder.passage_model)):
            tower.save_pretrained(directory / sub)
            encoder.tokenizer.save_pretrained(directory / sub)  # each tower dir loads on its own
    encoder.tokenizer.save_pretrained(directory)
    from distillir.retrievers.dense.card import CARD_FILE, model_card

    (directory / CARD_FILE).write_text(model_card(encoder, getattr(encoder, "card_training", None)), encoding="utf-8")
    write_json(
        directory / SETTINGS_FILE,
        {"format_version": ENCODER_FORMAT, "settings": asdict(encoder.settings), "passage_input": PASSAGE_INPUT},
    )

def write_sentence_transformers_files(encoder: BiEncoder, directory: Path) -> None:
    """modules.json, 1_Pooling/ (and 2_Normalize/): a shared encoder's directory loads in sentence-transformers."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if encoder.settings.normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (directory / "2_Normalize").mkdir(exist_ok=True)
    write_json(directory / "modules.json", modules)
    write_json(
        directory / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": encoder.dim,
            "pooling_mode_cls_token": encoder.settings.pooling == "cls",
            "pooling_mode_mean_tokens": encoder.settings.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    write_json(
        directory / "sentence_bert_config.json",
        {"max_seq_length": encoder.settings.passage_max_length, "do_lower_case": False},
    )


__all__ = ["ENCODER_FORMAT", "PASSAGE_INPUT", "POOLINGS", "SETTINGS_FILE", "EncoderSettings", "read_settings",
           "write_encoder_files", "write_sentence_transformers_files"]
