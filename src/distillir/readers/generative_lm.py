"""Generative retrieval with a causal LM: a decoder-only LM continues a prompt holding the query with a passage's
identifier, constrained to the corpus's prefix tree (`retrievers.generative`), so it needs no trained seq2seq: a
pretrained LM can already write the title of a passage about the query. A passage's score is the sum of its
identifier's token log-probabilities after the prompt; the LM is frozen or trains its last layers
(`readers.rag_lm.train_last_layers`), e.g. with DGR's objective. It lives with the readers because it is
one: the causal-LM reader, writing identifiers instead of answers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from distillir.data.run import Run
from distillir.errors import ConfigError, InputError
from distillir.retrievers.generative import DOCIDS_FILE, GenerativeRetriever
from distillir.utils.io import atomic_dir, write_json

DEFAULT_PROMPT = "Question: {query}\nTitle of a document that answers it:"


class CausalGenerativeRetriever(GenerativeRetriever):
    """`GenerativeRetriever`'s interface (score, search, save) over a `CausalLMReader`; `seq2seq` is the LM
    module (what a Trainer steps), the name the recipes use for the trainable model."""

    def __init__(self, lm, passage_ids: Sequence[str], docids: Sequence[str], query_max_length: int = 64,
                 docid_max_length: int = 32, prompt: str = DEFAULT_PROMPT):
        if "{query}" not in prompt:
            raise ConfigError(f"the generative retriever's prompt must contain {{query}}, got {prompt!r}")
        self.lm = lm
        self.prompt = prompt
        super().__init__(lm.model, passage_ids, docids, query_max_length, docid_max_length)

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    @property
    def model(self):
        return self.lm.model

    @property
    def eos_token_id(self) -> int:
        """What ends an identifier: the tokenizer's end token, else the model config's."""
        eos = self.lm.tokenizer.eos_token_id
        if eos is None:
            eos = self.lm.model.config.eos_token_id
            eos = eos[0] if isinstance(eos, list) else eos
        if eos is None:
            raise ConfigError(f"{self.lm.name}: no end-of-sequence token to end identifiers with")
        return int(eos)

    def _docid_ids(self, docid: str, suffix: str = "") -> list[int]:
        tail = self.tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
        room = self.docid_max_length - 1 - len(tail)
        if room < 1:
            raise ConfigError(f"docid_max_length {self.docid_max_length} leaves no room for an identifier")
        ids = self.tokenizer(" " + docid, add_special_tokens=False, truncation=True, max_length=room)["input_ids"]
        return [*ids, *tail, self.eos_token_id]

    def _prompt_ids(self, query: str) -> list[int]:
        ids = self.tokenizer(query, add_special_tokens=False, truncation=True,
                             max_length=self.query_max_length)["input_ids"]
        return self.lm._prompt_ids(self.prompt.format(query=self.tokenizer.decode(ids)))

    def tokenize_queries(self, queries: Sequence[str]):
        """Prompt ids, right-padded: {"input_ids", "attention_mask"} tensors (a batch a Trainer can move)."""
        rows = [self._prompt_ids(q) for q in queries]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        return {"input_ids": ids, "attention_mask": mask}

    def score(self, queries: dict, labels: torch.Tensor, per_query: int = 1) -> torch.Tensor:
        """(B, per_query) sum of token log-probs of each query's identifiers after its prompt; keeps gradients."""
        from distillir.models.seq2seq import IGNORE_INDEX
        from distillir.readers.rag_lm import token_log_probs

        prompts = [row[m.bool()].tolist() for row, m in zip(queries["input_ids"].cpu(), queries["attention_mask"].cpu())]
        targets = [[t for t in row if t != IGNORE_INDEX] for row in labels.cpu().tolist()]
        token, _ = token_log_probs(self.lm, [p for p in prompts for _ in range(per_query)], targets)
        return token.sum(dim=-1).view(-1, per_query)

    @torch.no_grad()
    def search(self, queries, top_k: int = 10, batch_size: int = 8, num_beams: int | None = None,
               show_progress: bool = True):
        """Constrained beam search after each query's prompt: its best `top_k` passages (a `Run`)."""
        from tqdm.auto import tqdm

        ids_texts = list(queries.items()) if isinstance(queries, dict) else list(zip(queries.ids, queries.texts))
        bar = tqdm(total=len(ids_texts), desc="generative search", unit="q", disable=not show_progress)
        beams = max(top_k, num_beams or top_k)
        run = Run(name="generative-lm")
        pad, eos = self.tokenizer.pad_token_id, self.eos_token_id
        for i in range(0, len(ids_texts), batch_size):
            chunk = ids_texts[i:i + batch_size]
            rows = [self._prompt_ids(t) for _, t in chunk]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, p in enumerate(rows):  # left padding: every continuation starts at column `width`
                ids[r, width - len(p):], mask[r, width - len(p):] = torch.tensor(p), 1

            def allowed(_batch_id, sent, width=width):
                return self.trie.next_tokens(sent.tolist()[width:]) or [eos]

            out = self.model.generate(
                input_ids=ids.to(self.lm.device), attention_mask=mask.to(self.lm.device), num_beams=beams,
                num_return_sequences=beams, max_new_tokens=self.docid_max_length, length_penalty=0.0,
                prefix_allowed_tokens_fn=allowed, output_scores=True, return_dict_in_generate=True,
                eos_token_id=eos, pad_token_id=pad, do_sample=False, early_stopping=True)
            sequences = out.sequences[:, width:].reshape(len(chunk), beams, -1).tolist()
            scores = out.sequences_scores.view(len(chunk), beams).tolist()
            for (qid, _), seqs, vals in zip(chunk, sequences, scores):
                hits: dict[str, float] = {}
                for body, value in zip(seqs, vals):
                    if eos in body:
                        body = body[: body.index(eos) + 1]
                    row = self.trie.row_of(body)
                    if row is not None and self.passage_ids[row] not in hits:
                        hits[self.passage_ids[row]] = float(value)
                run.add(qid, list(hits.items())[:top_k])
            bar.update(len(chunk))
        bar.close()
        return run

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        self.lm.model.save_pretrained(directory / "model")
        self.lm.tokenizer.save_pretrained(directory / "model")
        with atomic_dir(directory / "index") as tmp:
            write_json(tmp / DOCIDS_FILE, {"passage_ids": self.passage_ids, "docids": self.docids, "kind": "causal-lm",
                                          "prompt": self.prompt, "query_max_length": self.query_max_length,
                                          "docid_max_length": self.docid_max_length})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: str = "float32") -> CausalGenerativeRetriever:
        """`dtype`: float32, bfloat16, int8, or auto (bfloat16 where the CPU has it natively, else float32)."""
        from distillir.readers.causal_lm import CausalLMReader
        from distillir.readers.prompts import PromptTemplate

        directory = Path(directory)
        path = directory / "index" / DOCIDS_FILE
        if not path.is_file():
            raise InputError(path, "not a saved generative retriever (no index/docids.json)")
        saved = json.loads(path.read_text(encoding="utf-8"))
        lm = CausalLMReader.from_pretrained(directory / "model", prompts=PromptTemplate(chat=False), dtype=dtype)
        return cls(lm, saved["passage_ids"], saved["docids"], saved["query_max_length"], saved["docid_max_length"],
                   saved["prompt"])


def load_generative_retriever(directory: str | Path, dtype: str = "float32"):
    """A saved generative retriever of either kind (seq2seq or causal LM); `dtype` applies to a causal LM."""
    path = Path(directory) / "index" / DOCIDS_FILE
    kind = json.loads(path.read_text(encoding="utf-8")).get("kind") if path.is_file() else None
    if kind == "causal-lm":
        return CausalGenerativeRetriever.from_pretrained(directory, dtype=dtype)
    return GenerativeRetriever.from_pretrained(directory)


__all__ = ["CausalGenerativeRetriever", "load_generative_retriever"]
