"""Generative retrieval: a seq2seq model that writes a passage's identifier (Tay et al., 2022, DSI; De Cao et al.,
2021; Li et al., 2024, DGR). Decoding is constrained to a prefix tree of the corpus's identifiers, so every
output names a real passage; a passage's score is the sum of its identifier's token log-probabilities.

Identifiers (`docid_scheme`):
- "title": the passage title, made unique with a counter, "Normans | 2" (semantic: the model can guess it from
  the question, as SEAL/MINDER use titles);
- "id": the corpus id itself (atomic; the model must memorise it).

The seq2seq model is a `Seq2SeqLM` (any HF encoder-decoder: a hub T5/BART, an encoder-decoder warm-started
from a BERT-like encoder, a T5 from config; a FiD reader is one too); the query is its only input.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from distillir.data.run import Run
from distillir.errors import ConfigError, InputError
from distillir.models.seq2seq import IGNORE_INDEX, Seq2SeqLM, token_log_likelihood
from distillir.utils.io import atomic_dir, write_json

SCHEMES = ("title", "id")
DOCIDS_FILE = "docids.json"


def make_docids(corpus, scheme: str = "title") -> list[str]:
    """One unique identifier string per passage, in corpus order."""
    if scheme not in SCHEMES:
        raise ConfigError(f"docid_scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme == "id":
        return [str(pid) for pid in corpus.ids]
    seen: dict[str, int] = {}
    docids = []
    for pid, title in zip(corpus.ids, corpus.titles):
        base = " ".join((title or "").split()) or str(pid)
        key = base.lower()  # count case variants together: most tokenizers lowercase
        seen[key] = seen.get(key, 0) + 1
        docids.append(f"{base} | {seen[key]}")
    return docids


class DocidTrie:
    """A prefix tree over token-id sequences (each ends with EOS): which tokens may follow a prefix."""

    def __init__(self, sequences: Sequence[Sequence[int]]):
        self.root: dict[int, dict] = {}
        self.leaves: dict[tuple[int, ...], int] = {}
        for row, seq in enumerate(sequences):
            node = self.root
            for token in seq:
                node = node.setdefault(int(token), {})
            key = tuple(int(t) for t in seq)
            if key in self.leaves:
                raise InputError(None, f"two passages share the identifier tokens {list(key)}: make docids unique")
            self.leaves[key] = row

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        node = self.root
        for token in prefix:
            node = node.get(int(token))
            if node is None:
                return []
        return list(node)

    def row_of(self, sequence: Sequence[int]) -> int | None:
        return self.leaves.get(tuple(int(t) for t in sequence))


class GenerativeRetriever:
    """A seq2seq identifier generator over one corpus: `score` (teacher-forced, differentiable) and `search`
    (constrained beam search)."""

    def __init__(self, seq2seq: Seq2SeqLM, passage_ids: Sequence[str], docids: Sequence[str],
                 query_max_length: int = 64, docid_max_length: int = 32):
        if len(passage_ids) != len(docids):
            raise ValueError("one docid per passage id")
        self.seq2seq = seq2seq
        self.passage_ids = list(passage_ids)
        self.docids = list(docids)
        self.query_max_length = query_max_length
        self.docid_max_length = docid_max_length
        self.docid_tokens = self._unique_tokens()
        self.trie = DocidTrie(self.docid_tokens)
        self.row_of_pid = {pid: i for i, pid in enumerate(self.passage_ids)}

    @property
    def tokenizer(self):
        return self.seq2seq.tokenizer

    @property
    def model(self):
        return self.seq2seq.model

    def _docid_ids(self, docid: str, suffix: str = "") -> list[int]:
        """Identifier tokens + EOS within docid_max_length; a suffix survives truncation of the docid."""
        tail = self.tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
        room = self.docid_max_length - 1 - len(tail)
        if room < 1:
            raise ConfigError(f"docid_max_length {self.docid_max_length} leaves no room for an identifier")
        ids = self.tokenizer(docid, add_special_tokens=False, truncation=True, max_length=room)["input_ids"]
        return [*ids, *tail, self.seq2seq.eos_token_id]

    def _unique_tokens(self) -> list[list[int]]:
        """Token sequences of the identifiers; two that tokenize alike (case, accents, truncation) get
        " ~2", " ~3", ... appended until they differ (the docid strings record it)."""
        seen: set[tuple[int, ...]] = set()
        out = []
        for i, docid in enumerate(self.docids):
            tokens, k = self._docid_ids(docid), 1
            while tuple(tokens) in seen:
                k += 1
                tokens = self._docid_ids(docid, f" ~{k}")
            if k > 1:
                self.docids[i] = f"{docid} ~{k}"
            seen.add(tuple(tokens))
            out.append(tokens)
        return out

    def tokenize_queries(self, queries: Sequence[str]):
        return self.tokenizer(list(queries), max_length=self.query_max_length, truncation=True, padding="longest",
                              return_tensors="pt")

    def docid_labels(self, pids: Sequence[str]) -> torch.Tensor:
        """(len(pids), T) identifier token ids, padded with IGNORE_INDEX."""
        rows = [self.docid_tokens[self.row_of_pid[p]] for p in pids]
        width = max(len(r) for r in rows)
        return torch.tensor([r + [IGNORE_INDEX] * (width - len(r)) for r in rows], dtype=torch.long)

    def score(self, queries: dict, labels: torch.Tensor, per_query: int = 1) -> torch.Tensor:
        """(B, per_query) sum of token log-probs of each query's `per_query` identifiers (labels: B*per_query
        rows, query-major); keeps gradients."""
        ids, mask = queries["input_ids"], queries["attention_mask"]
        hidden = self.seq2seq.encode_sequences(ids, mask)
        hidden = hidden.repeat_interleave(per_query, dim=0)
        mask = mask.repeat_interleave(per_query, dim=0).bool()
        logits = self.seq2seq.decode(hidden, mask, self.seq2seq.decoder_inputs(labels, labels.shape[0],
                                                                              labels.device)).logits
        return token_log_likelihood(logits, labels).sum(dim=-1).view(-1, per_query)

    @torch.no_grad()
    def search(self, queries, top_k: int = 10, batch_size: int = 8, num_beams: int | None = None,
               show_progress: bool = True):
        """Constrained beam search: each query's best `top_k` passages (a `Run`), scored by identifier log-prob."""
        from tqdm.auto import tqdm

        ids_texts = list(queries.items()) if isinstance(queries, dict) else list(zip(queries.ids, queries.texts))
        bar = tqdm(total=len(ids_texts), desc="generative search", unit="q", disable=not show_progress)
        beams = max(top_k, num_beams or top_k)
        was_training = self.model.training
        self.model.eval()
        run = Run(name="generative")
        start = self.seq2seq.decoder_start_token_id

        def allowed(_batch_id, sent):
            tokens = sent.tolist()
            return self.trie.next_tokens(tokens[1:] if tokens and tokens[0] == start else tokens) or \
                [self.seq2seq.pad_token_id]

        try:
            for i in range(0, len(ids_texts), batch_size):
                chunk = ids_texts[i:i + batch_size]
                enc = self.tokenize_queries([t for _, t in chunk]).to(self.seq2seq.device)
                out = self.model.generate(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], num_beams=beams,
                    num_return_sequences=beams, max_new_tokens=self.docid_max_length, length_penalty=0.0,
                    prefix_allowed_tokens_fn=allowed, output_scores=True, return_dict_in_generate=True,
                    decoder_start_token_id=start, eos_token_id=self.seq2seq.eos_token_id,
                    pad_token_id=self.seq2seq.pad_token_id, do_sample=False, early_stopping=True)
                sequences = out.sequences.view(len(chunk), beams, -1)
                scores = out.sequences_scores.view(len(chunk), beams)
                for (qid, _), seqs, vals in zip(chunk, sequences.tolist(), scores.tolist()):
                    hits: dict[str, float] = {}
                    for seq, value in zip(seqs, vals):
                        body = seq[1:] if seq and seq[0] == start else seq
                        if self.seq2seq.eos_token_id in body:
                            body = body[: body.index(self.seq2seq.eos_token_id) + 1]
                        row = self.trie.row_of(body)
                        if row is not None and self.passage_ids[row] not in hits:
                            hits[self.passage_ids[row]] = float(value)
                    run.add(qid, list(hits.items())[:top_k])
                bar.update(len(chunk))
        finally:
            bar.close()
            self.model.train(was_training)
        return run

    # ---- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        self.seq2seq.save_pretrained(directory / "model")
        with atomic_dir(directory / "index") as tmp:
            write_json(tmp / DOCIDS_FILE, {"passage_ids": self.passage_ids, "docids": self.docids,
                                          "query_max_length": self.query_max_length,
                                          "docid_max_length": self.docid_max_length})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> GenerativeRetriever:
        directory = Path(directory)
        path = directory / "index" / DOCIDS_FILE
        if not path.is_file():
            raise InputError(path, "not a saved generative retriever (no index/docids.json)")
        saved = json.loads(path.read_text(encoding="utf-8"))
        return cls(Seq2SeqLM.from_pretrained(directory / "model"), saved["passage_ids"], saved["docids"], saved["query_max_length"],
                   saved["docid_max_length"])


__all__ = ["DocidTrie", "GenerativeRetriever", "make_docids"]
