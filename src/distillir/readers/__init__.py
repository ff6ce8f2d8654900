"""Readers: models that answer a question from retrieved passages, and teach retrievers which passages helped.

- `fid`: `FiDReader` (Fusion-in-Decoder; Izacard & Grave, 2021), the reader FiD-KD trains.
- `causal_lm`: `CausalLMReader`, any decoder-only LM (hub id, directory, GGUF file) used as it is.
- `prompts`: the causal-LM reader's prompt templates (no torch).

The torch-based modules load on first use, so configs can import `prompts` cheaply.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "DEFAULT_TEMPLATE": "fid",
    "FiDBatch": "fid",
    "FiDCollator": "fid",
    "FiDOutput": "fid",
    "FiDReader": "fid",
    "examples_from_run": "fid",
    "load_fid_examples": "fid",
    "CausalLMReader": "causal_lm",
    "DEFAULT_READER_LM": "prompts",
    "PromptTemplate": "prompts",
}

__all__ = ["DEFAULT_READER_LM", "DEFAULT_TEMPLATE", "CausalLMReader", "FiDBatch", "FiDCollator", "FiDOutput", "FiDReader",
           "PromptTemplate", "examples_from_run", "load_fid_examples"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"distillir.readers.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'distillir.readers' has no attribute {name!r}")
