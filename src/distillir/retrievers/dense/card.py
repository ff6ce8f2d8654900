"""The model card (README.md, Hugging Face convention) written into every saved bi-encoder: what it is, how its
inputs are formed, and how to load it with distillir or plain transformers so that the vectors match the ones
distillir indexed. Recipes may add what trained it (`training`: a dict of facts, shown as a table)."""

from __future__ import annotations

from typing import Any

CARD_FILE = "README.md"


def _snippet(settings, shared: bool) -> str:
    query_dir, passage_dir = ("path", "path") if shared else ('f"{path}/query"', 'f"{path}/passage"')
    pooled = ("out.last_hidden_state[:, 0]" if settings.pooling == "cls" else
              "(out.last_hidden_state * mask).sum(1) / mask.sum(1)")
    norm = "\n    vectors = torch.nn.functional.normalize(vectors, dim=-1)" if settings.normalize else ""
    return f'''import torch
from transformers import AutoModel, AutoTokenizer

path = "PATH"  # this directory
tokenizer = AutoTokenizer.from_pretrained(path)
query_tower = AutoModel.from_pretrained({query_dir}).eval()
passage_tower = AutoModel.from_pretrained({passage_dir}).eval()


def embed(model, batch):
    with torch.no_grad():
        out = model(**batch)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    vectors = {pooled}{norm}
    return vectors


queries = embed(query_tower, tokenizer(["who wrote hamlet?"], padding=True, truncation=True,
                                       max_length={settings.query_max_length}, return_tensors="pt"))
# A passage is the tokenizer pair (title, text); a passage without a title is its text alone.
passages = embed(passage_tower, tokenizer(["Hamlet"], ["Hamlet is a tragedy by William Shakespeare."],
                                          padding=True, truncation="longest_first",
                                          max_length={settings.passage_max_length}, return_tensors="pt"))
scores = {settings.scale!r} * queries @ passages.T  # the similarity distillir ranks by
'''


def model_card(encoder, training: dict[str, Any] | None = None) -> str:
    s = encoder.settings
    towers = "one shared tower for questions and passages" if encoder.shared else \
        "two towers: `query/` for questions, `passage/` for passages"
    lines = [
        "---", "library_name: transformers", "tags: [distillir, dense-retrieval, bi-encoder]", "---", "",
        "# A distillir bi-encoder", "",
        (f"A dense retriever saved by distillir, started from `{encoder.name_or_path or 'unknown'}`: "
        f"{towers}; {s.pooling} pooling; embeddings {'normalised to unit length' if s.normalize else 'not normalised'}; "
        f"similarity = {s.scale:g} x dot product; questions up to {s.query_max_length} tokens, passages up to "
        f"{s.passage_max_length}."), "",
        ("**Passages are encoded as the tokenizer pair (title, text)** (`[CLS] title [SEP] text [SEP]` for BERT-style "
        "tokenizers), not as one string: `encode(\"title text\")` gives vectors that differ from the indexed ones "
        "(measured cosine 0.95-0.97 for MiniLM)."), "",
    ]
    if training:
        lines += ["## Training", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in training.items()]
        lines.append("")
    lines += [
        "## Use", "", "With distillir:", "", "```python",
        "from distillir.retrievers.dense.encoder import BiEncoder", "",
        'encoder = BiEncoder.from_pretrained("PATH")',
        'q = encoder.encode_queries(["who wrote hamlet?"])',
        'p = encoder.encode_passages(["Hamlet"], ["Hamlet is a tragedy by William Shakespeare."])', "```", "",
        "`distillir index CORPUS --retriever dense --model PATH --out DIR` indexes a corpus with it.", "",
        "With plain transformers (the same vectors):", "", "```python", _snippet(s, encoder.shared).rstrip(), "```", "",
    ]
    if encoder.shared:
        lines += ["The directory also carries sentence-transformers module files (pooling"
                  + (", normalisation" if s.normalize else "") + "), so `SentenceTransformer(PATH)` loads it; "
                  "encode passages as above (title and text as a pair), not as one string.", ""]
    return "\n".join(lines)


__all__ = ["CARD_FILE", "model_card"]
