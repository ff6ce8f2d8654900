"""Two tiny handmade datasets in the field's layouts, for smoke runs, examples and tests (no download).

- `write_toy_beir(root)`: BEIR layout, 8 topics x 2 passages, one train and one test claim per topic, each
  relevant (qrels) to its topic's first passage.
- `write_toy_qa(root)`: squad-open layout, 12 passages, 8 train questions with answers only (no gold passage,
  no qrels; two answers each, so a reader's answer choice is random) and 4 dev questions with gold ids.
"""

from __future__ import annotations

import json
from pathlib import Path

TOPICS = ["volcano", "glacier", "protein", "galaxy", "bacteria", "river", "neuron", "comet"]
FACTS = [  # topic, discoverer, year
    ("volcano", "Alvarez", "1871"), ("glacier", "Bertrand", "1902"), ("protein", "Castillo", "1838"),
    ("galaxy", "Dubois", "1924"), ("bacteria", "Eriksen", "1676"), ("comet", "Fontaine", "1758"),
]


def _jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_toy_beir(root: str | Path) -> Path:
    root = Path(root)
    (root / "qrels").mkdir(parents=True)
    corpus, queries, train, test = [], [], [], []
    for i, topic in enumerate(TOPICS):
        corpus.append({"_id": f"d{i}a", "title": topic.title(), "text": f"The {topic} is studied by scientists."})
        corpus.append({"_id": f"d{i}b", "title": "", "text": f"Another note mentioning the {topic} briefly."})
        queries.append({"_id": f"train{i}", "text": f"what do scientists study about the {topic}"})
        queries.append({"_id": f"test{i}", "text": f"{topic} research"})
        train.append(f"train{i}\td{i}a\t1")
        test.append(f"test{i}\td{i}a\t1")
    _jsonl(root / "corpus.jsonl", corpus)
    _jsonl(root / "queries.jsonl", queries)
    for split, rows in (("train", train), ("test", test)):
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return root


def write_toy_qa(root: str | Path) -> Path:
    root = Path(root)
    root.mkdir(parents=True)
    rows = ["id\ttext\ttitle"]
    for i, (topic, name, year) in enumerate(FACTS):
        rows.append(f"p{i}a\tThe first {topic} survey was led by {name} in {year}.\t{topic.title()}")
        rows.append(f"p{i}b\tMany people find the {topic} beautiful to look at.\t{topic.title()} culture")
    (root / "corpus.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    train, dev = [], []
    for i, (topic, name, year) in enumerate(FACTS):
        train.append({"id": f"t{i}", "question": f"Who led the first {topic} survey?", "answers": [name, f"Dr. {name}"]})
        if i < 2:
            train.append({"id": f"t{i}y", "question": f"In which year was the {topic} survey?",
                          "answers": [year, f"in {year}"]})
        else:
            dev.append({"id": f"d{i}", "question": f"When was the first {topic} survey led?", "answers": [year],
                        "gold_pid": f"p{i}a"})
    _jsonl(root / "train.jsonl", train)
    _jsonl(root / "dev.jsonl", dev)
    return root


__all__ = ["FACTS", "TOPICS", "write_toy_beir", "write_toy_qa"]
