"""Reader examples and batches: the ctxs JSONL layout, and turning examples into the FiD reader's tensors.

An example is a dict in the DPR/FiD layout that `Run.write_jsonl` writes: {"id", "question", "answers",
"ctxs": [{"id", "title", "text", ...}]}. `FiDCollator` tokenizes each (question, passage) as
"question: q title: t context: p" into a `FiDBatch` of (B, n, L) tensors.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from distillir.errors import ConfigError, InputError
from distillir.models.seq2seq import IGNORE_INDEX
from distillir.utils.io import iter_jsonl_objects

DEFAULT_TEMPLATE = "question: {question} title: {title} context: {text}"


# --------------------------------------------------------------------------------------------------
# Examples and batches
# --------------------------------------------------------------------------------------------------


def _example_id(example: dict, position: int) -> str:
    qid = example.get("id", example.get("qid"))
    return str(position) if qid is None else str(qid)


def _answers_of(example: dict) -> list[str] | None:
    answers = example.get("answers")
    if answers is None:
        return None
    if isinstance(answers, str):
        answers = [answers]
    answers = [str(a) for a in answers if a is not None and str(a).strip()]
    return answers or None


@dataclass
class FiDBatch:
    """Tensors for the reader plus what is needed to map its outputs back to ids.

    input_ids, attention_mask: (B, n, L). context_present: (B, n), false where an example had fewer than
    n passages (those slots hold a question-only filler that the decoder never attends to).
    labels: (B, T) answer token ids ending in EOS, padded with -100; None when built without answers.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    context_present: torch.Tensor
    labels: torch.Tensor | None
    qids: list[str]
    pids: list[list[str]]  # the real passages of each example, in slot order
    answers: list[list[str] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.qids)

    def model_inputs(self) -> dict[str, torch.Tensor | None]:
        """Keyword arguments for `FiDReader.forward`."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "context_present": self.context_present,
            "labels": self.labels,
        }

    def to(self, device: torch.device | str) -> FiDBatch:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return FiDBatch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in values.items()})


class FiDCollator:
    """Turns reader examples into a `FiDBatch`.

    An example is a dict in the DPR/FiD layout that `Run.write_jsonl` writes: {"id", "question",
    "answers", "ctxs": [{"id", "title", "text", ...}]}. The first `n_passages` ctxs are used; an example
    with fewer gets question-only filler slots, marked absent in `context_present`.

    Target answer: "first" always trains on answers[0] (deterministic, what teacher scoring uses);
    "random" draws one answer per example, as the official FiD training does, from a `random.Random(seed)`
    owned by this collator, so a run is reproducible for a given seed and example order (each DataLoader
    worker holds its own copy, hence its own identical stream).

    labels: True requires answers on every example; False never builds labels (prediction, first-token
    scoring); None (default) builds them when every example has answers, none when no example has any,
    and raises on a mix.
    """

    def __init__(
        self,
        tokenizer,
        n_passages: int,
        passage_max_length: int = 200,
        answer_max_length: int = 32,
        *,
        eos_token_id: int | None = None,
        template: str = DEFAULT_TEMPLATE,
        answer_choice: str = "first",
        seed: int = 0,
        labels: bool | None = None,
    ):
        if n_passages < 1:
            raise ConfigError(f"n_passages must be at least 1, got {n_passages}")
        if answer_max_length < 2:
            raise ConfigError(f"answer_max_length must leave room for a token and EOS, got {answer_max_length}")
        if answer_choice not in ("first", "random"):
            raise ConfigError(f"answer_choice must be 'first' or 'random', got {answer_choice!r}")
        if eos_token_id is None:
            eos_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if eos_token_id is None:
            raise ConfigError("the tokenizer has neither an EOS nor a SEP token; pass eos_token_id")
        self.tokenizer = tokenizer
        self.n_passages = n_passages
        self.passage_max_length = passage_max_length
        self.answer_max_length = answer_max_length
        self.eos_token_id = eos_token_id
        self.template = template
        self.answer_choice = answer_choice
        self.labels = labels
        self._rng = random.Random(seed)

    def passage_text(self, question: str, title: str, text: str) -> str:
        return self.template.format(question=question, title=title, text=text)

    def __call__(self, examples: Sequence[dict]) -> FiDBatch:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        qids, pids, answers, texts, present = [], [], [], [], []
        for position, example in enumerate(examples):
            qid = _example_id(example, position)
            question = example.get("question")
            if not isinstance(question, str):
                raise InputError(None, f"example {qid!r} has no question text", field="question")
            ctxs = list(example.get("ctxs") or [])[: self.n_passages]
            if not ctxs:
                raise InputError(None, f"example {qid!r} has no ctxs (retrieved passages) to read", field="ctxs")
            ids = []
            for ctx in ctxs:
                if not isinstance(ctx, dict) or "text" not in ctx:
                    raise InputError(None, f"example {qid!r}: every ctx needs a 'text'", field="ctxs")
                ids.append(str(ctx.get("id", len(ids))))
                texts.append(self.passage_text(question, str(ctx.get("title") or ""), str(ctx["text"])))
            for _ in range(self.n_passages - len(ctxs)):
                texts.append(self.passage_text(question, "", ""))
            qids.append(qid)
            pids.append(ids)
            answers.append(_answers_of(example))
            present.append([True] * len(ctxs) + [False] * (self.n_passages - len(ctxs)))

        encoded = self.tokenizer(
            texts, max_length=self.passage_max_length, truncation=True, padding="longest", return_tensors="pt"
        )
        shape = (len(examples), self.n_passages, -1)
        return FiDBatch(
            input_ids=encoded["input_ids"].view(shape),
            attention_mask=encoded["attention_mask"].view(shape),
            context_present=torch.tensor(present, dtype=torch.bool),
            labels=self._labels(qids, answers),
            qids=qids,
            pids=pids,
            answers=answers,
        )

    def _labels(self, qids: list[str], answers: list[list[str] | None]) -> torch.Tensor | None:
        if self.labels is False:
            return None
        missing = [q for q, a in zip(qids, answers) if a is None]
        if missing and (self.labels or len(missing) < len(qids)):
            raise InputError(
                None,
                f"example {missing[0]!r} has no answers; the reader needs one to train or score on",
                field="answers",
            )
        if missing:
            return None
        targets = [a[0] if self.answer_choice == "first" else self._rng.choice(a) for a in answers]
        token_ids = self.tokenizer(
            targets, add_special_tokens=False, truncation=True, max_length=self.answer_max_length - 1
        )["input_ids"]
        # EOS is appended here rather than by the tokenizer, so every tokenizer family ends targets the same way.
        token_ids = [ids + [self.eos_token_id] for ids in token_ids]
        width = max(len(ids) for ids in token_ids)
        labels = torch.full((len(token_ids), width), IGNORE_INDEX, dtype=torch.long)
        for row, ids in enumerate(token_ids):
            labels[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return labels


def load_fid_examples(path: str | Path) -> list[dict]:
    """Read reader examples from the ctxs JSONL that `Run.write_jsonl` writes (one question per line)."""
    path = Path(path)
    examples = []
    for lineno, row in iter_jsonl_objects(path, "reader examples file"):
        if not isinstance(row.get("question"), str):
            raise InputError(path, "missing or non-string question", line=lineno, field="question")
        ctxs = row.get("ctxs")
        if not isinstance(ctxs, list) or not all(isinstance(c, dict) and "text" in c for c in ctxs):
            raise InputError(path, "ctxs must be a list of objects with a 'text'", line=lineno, field="ctxs")
        examples.append(row)
    if not examples:
        raise InputError(path, "no examples in file")
    return examples


def examples_from_run(run, queries, corpus, n_passages: int | None = None) -> list[dict]:
    """Reader examples (the ctxs layout) built in memory from a `Run`, its `Queries` and the `Corpus`."""
    examples = []
    for qid, hits in run.items():
        qi = queries.index_of.get(qid)
        if qi is None:
            continue
        hits = hits if n_passages is None else hits[:n_passages]
        examples.append(
            {
                "id": qid,
                "question": queries.texts[qi],
                "answers": queries.answers[qi],
                "ctxs": [{**corpus.passage(pid), "score": score} for pid, score in hits],
            }
        )
    return examples


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    if size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


__all__ = ["DEFAULT_TEMPLATE", "FiDBatch", "FiDCollator", "batched", "examples_from_run", "load_fid_examples"]
