"""Find datasets by name (as BEIR and ir_datasets do) and load one split of them.

A dataset is a directory in one of two layouts:
- BEIR: corpus.jsonl, queries.jsonl, qrels/{split}.tsv (queries of a split = those its qrels judge);
- open-domain QA (squad-open): corpus.tsv, {split}.jsonl QA lines with answers and gold_pid, qrels/{split}.tsv.

Names are looked up in `data_dirs()`; the known public sets are downloaded into the cache when absent.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from distillir.data.loaders import check_qrels, load_corpus, load_qrels, load_queries
from distillir.data.types import Dataset, Qrels, Queries
from distillir.errors import DistillirError, InputError
from distillir.utils.io import atomic_dir, atomic_write, cache_dir

if TYPE_CHECKING:
    import zipfile

__all__ = [
    "KNOWN_DATASETS",
    "available_splits",
    "build_squad_open",
    "data_dirs",
    "download",
    "load_dataset",
    "resolve_dataset_dir",
]

SCIFACT_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip"
SQUAD_URLS = {
    "train": "https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v1.1.json",
    "dev": "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json",
}

# The repository root: src/distillir/data/datasets.py -> four levels up.
_REPO_ROOT = Path(__file__).resolve().parents[3]


def data_dirs() -> list[Path]:
    """Where datasets are looked for, in order: $DISTILLIR_DATA (os.pathsep-separated), ../shared/data
    relative to the working directory and to the repository root, then the download cache."""
    candidates: list[Path] = []
    env = os.environ.get("DISTILLIR_DATA", "")
    candidates += [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    candidates += [Path.cwd() / ".." / "shared" / "data", _REPO_ROOT / ".." / "shared" / "data"]
    candidates.append(cache_dir() / "datasets")
    unique: list[Path] = []
    seen: set[Path] = set()
    for path in candidates:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            unique.append(resolved)
    return unique


# ---------------------------------------------------------------------------------------------- download


def download(url: str, dest: str | Path, desc: str | None = None) -> Path:
    """Fetch `url` into `dest` with a progress bar; the file appears only once complete."""
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    from distillir import __version__

    dest = Path(dest)
    request = urllib.request.Request(url, headers={"User-Agent": f"distillir/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, atomic_write(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=desc or dest.name) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        raise DistillirError(
            f"could not download {url} ({e}); fetch it by hand, or point DISTILLIR_DATA at a copy"
        ) from None
    return dest


def _cached_download(url: str) -> Path:
    """The downloaded file under cache_dir()/downloads, fetched once."""
    dest = cache_dir() / "downloads" / PurePosixPath(url).name
    return dest if dest.is_file() else download(url, dest)


def _fetch_scifact(target: Path) -> None:
    """Unpack BEIR's scifact.zip (corpus.jsonl, queries.jsonl, qrels/*.tsv) into `target`."""
    import zipfile  # only needed for downloads; keeps `import distillir.data` quick

    archive = _cached_download(SCIFACT_URL)
    try:
        with zipfile.ZipFile(archive) as zf, atomic_dir(target) as tmp:
            _extract_folder(zf, "scifact", tmp)
    except zipfile.BadZipFile:
        archive.unlink(missing_ok=True)  # a bad download must not be reused
        raise DistillirError(f"{archive} is not a valid zip; deleted it, run again to re-download") from None


def _extract_folder(zf: zipfile.ZipFile, folder: str, out: Path) -> None:
    """Extract the members under `folder/` into `out`, refusing paths that would escape it."""
    for info in zf.infolist():
        parts = PurePosixPath(info.filename).parts
        if info.is_dir() or len(parts) < 2 or parts[0] != folder or ".." in parts:
            continue
        dest = out.joinpath(*parts[1:])
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst)


def _fetch_squad_open(target: Path) -> None:
    """Download SQuAD v1.1 and convert it into the squad-open layout in `target`."""
    train_json = _cached_download(SQUAD_URLS["train"])
    dev_json = _cached_download(SQUAD_URLS["dev"])
    with atomic_dir(target) as tmp:
        build_squad_open(train_json, dev_json, tmp)


# Datasets that can be fetched when no local copy exists: name -> function filling a directory.
KNOWN_DATASETS: dict[str, Callable[[Path], None]] = {
    "scifact": _fetch_scifact,
    "squad-open": _fetch_squad_open,
}


# ---------------------------------------------------------------------------------------------- SQuAD


def build_squad_open(train_json: str | Path, dev_json: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Convert SQuAD v1.1 json files into the open-domain squad-open layout in `out_dir`.

    Writes corpus.tsv (header id, text, title; every paragraph once, ids "1", "2", ... over dev articles
    then train articles, each sorted by title), {train,dev}.jsonl (`id`, `question`, distinct `answers`,
    `gold_pid`) and qrels/{train,dev}.tsv. Questions keep SQuAD's ids; one without an id gets
    `{split}-AAA-PPP-QQ` (article, paragraph, question numbers). Paragraph whitespace is collapsed to
    single spaces so a passage is one TSV line. Returns the counts written.
    """
    out = Path(out_dir)
    sources = {"dev": Path(dev_json), "train": Path(train_json)}
    pid_of: dict[tuple[str, str], str] = {}
    corpus_rows: list[tuple[str, str, str]] = []
    questions: dict[str, list[dict]] = {}
    for split, source in sources.items():
        try:
            questions[split] = _convert_squad_split(split, _read_squad(source), pid_of, corpus_rows)
        except (KeyError, TypeError, AttributeError) as e:
            detail = f"an entry lacks {e.args[0]!r}" if isinstance(e, KeyError) else "unexpected structure"
            raise InputError(source, f"not a SQuAD v1.1 file: {detail}") from None
    _write_squad_open(out, corpus_rows, questions)
    return {"passages": len(corpus_rows), **{split: len(rows) for split, rows in questions.items()}}


def _convert_squad_split(split: str, articles: list[dict], pid_of: dict, corpus_rows: list) -> list[dict]:
    """Add this split's new paragraphs to `corpus_rows` (deduplicated via `pid_of`); return its questions."""
    questions = []
    for a, article in enumerate(sorted(articles, key=lambda art: art["title"])):
        title = article["title"].replace("_", " ")
        for p, paragraph in enumerate(article["paragraphs"]):
            context = " ".join(paragraph["context"].split())
            pid = pid_of.get((title, context))
            if pid is None:
                pid = pid_of[(title, context)] = str(len(corpus_rows) + 1)
                corpus_rows.append((pid, context, title))
            for q, qa in enumerate(paragraph["qas"]):
                record = _squad_question(qa, f"{split}-{a:03d}-{p:03d}-{q:02d}", pid)
                if record is not None:
                    questions.append(record)
    return questions


def _read_squad(path: Path) -> list[dict]:
    """The articles of a SQuAD json file, with a clear error for anything else."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not a SQuAD json file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise InputError(path, "not a SQuAD json file: expected {'data': [articles]}", field="data")
    return data["data"]


def _squad_question(qa: dict, fallback_id: str, pid: str) -> dict | None:
    """One squad-open question line, or None for a question that is blank."""
    question = qa.get("question", "").strip()
    if not question:
        return None
    answers = list(dict.fromkeys(a["text"].strip() for a in qa.get("answers", []) if a["text"].strip()))
    return {"id": str(qa.get("id") or fallback_id), "question": question, "answers": answers, "gold_pid": pid}


def _write_squad_open(out: Path, corpus_rows: list, questions: dict[str, list[dict]]) -> None:
    with atomic_write(out / "corpus.tsv") as f:
        f.write("id\ttext\ttitle\n")
        for pid, text, title in corpus_rows:
            f.write(f"{pid}\t{text}\t{title}\n")
    for split, rows in questions.items():
        with atomic_write(out / f"{split}.jsonl") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        with atomic_write(out / "qrels" / f"{split}.tsv") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for row in rows:
                f.write(f"{row['id']}\t{row['gold_pid']}\t1\n")


# ---------------------------------------------------------------------------------------------- resolve


def resolve_dataset_dir(name: str | Path, download_missing: bool = True) -> Path:
    """The directory of dataset `name`: an existing directory path as given, else the first `name/` in
    `data_dirs()`, else (for a known public set) a fresh download into the cache."""
    as_path = Path(name).expanduser()
    if as_path.is_dir():
        return as_path.resolve()
    name = str(name)
    dirs = data_dirs()
    for root in dirs:
        if (root / name).is_dir():
            return root / name
    if name in KNOWN_DATASETS and download_missing:
        target = cache_dir() / "datasets" / name
        KNOWN_DATASETS[name](target)
        return target.resolve()
    searched = ", ".join(str(d) for d in dirs)
    raise DistillirError(
        f"unknown dataset {name!r}: no such directory, and not found in {searched}. "
        f"Known names: {', '.join(sorted(KNOWN_DATASETS))}; or set DISTILLIR_DATA to a folder holding {name}/"
    )


def available_splits(directory: Path) -> list[str]:
    """Splits a dataset directory offers: its qrels/*.tsv and its QA {split}.jsonl files."""
    splits = {p.name.split(".")[0] for p in (directory / "qrels").glob("*.tsv*")}
    splits |= {p.name.split(".")[0] for p in directory.glob("*.jsonl*")} - {"corpus", "queries"}
    return sorted(splits)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_dataset(
    name_or_path: str | Path, split: str = "test", max_queries: int | None = None, seed: int = 0
) -> Dataset:
    """Load one split: the corpus, the split's queries and its qrels (checked against both).

    QA layout: queries from `{split}.jsonl`, qrels from `qrels/{split}.tsv` (or, if absent, from the
    questions' gold_pid). BEIR layout: queries.jsonl restricted to the qids judged in `qrels/{split}.tsv`.
    `max_queries` keeps a sample of that many queries drawn with `random.Random(seed)`, in file order,
    so benchmarks see the same subset every run.
    """
    directory = resolve_dataset_dir(name_or_path)
    qa_file = _find(directory, f"{split}.jsonl")
    qrels_file = _find(directory, f"qrels/{split}.tsv")
    if qa_file is None and qrels_file is None:
        raise DistillirError(
            f"{directory}: no split {split!r}; available: {', '.join(available_splits(directory)) or 'none'}"
        )
    corpus = load_corpus(directory)
    if qa_file is not None:
        queries = load_queries(qa_file)
        qrels = load_qrels(qrels_file) if qrels_file is not None else _qrels_from_gold(queries)
    else:
        qrels = load_qrels(qrels_file)
        queries = load_queries(directory, ids=qrels)
    if qrels is not None:
        qrels = check_qrels(qrels, corpus, queries, path=qrels_file or qa_file)
    if max_queries is not None and max_queries < len(queries):
        queries, qrels = _sample(queries, qrels, max_queries, seed)
    name = str(name_or_path) if str(name_or_path) in KNOWN_DATASETS else directory.name
    return Dataset(name=name, split=split, corpus=corpus, queries=queries, qrels=qrels)


def _qrels_from_gold(queries: Queries) -> Qrels | None:
    """Relevance from QA lines' gold_pid, when the dataset ships no qrels file."""
    qrels = {qid: {pid: 1 for pid in gold} for qid, gold in zip(queries.ids, queries.gold_ids) if gold}
    return qrels or None


def _sample(queries: Queries, qrels: Qrels | None, k: int, seed: int) -> tuple[Queries, Qrels | None]:
    """A seeded sample of k queries (kept in file order) and their qrels."""
    if k < 0:
        raise DistillirError(f"max_queries must be >= 0, got {k}")
    rows = sorted(random.Random(seed).sample(range(len(queries)), k))
    sampled = queries.subset([queries.ids[r] for r in rows])
    if qrels is None:
        return sampled, None
    return sampled, {qid: qrels[qid] for qid in sampled.ids if qid in qrels}
