"""The `distillir` command line: thin drivers over the library. Heavy imports happen inside commands,
so `distillir --help` stays fast."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="distillir",
    help="Train neural retrievers without relevance labels, by distillation; index, search, re-rank, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

CorpusArg = Annotated[
    str, typer.Argument(help="Corpus: a DPR .tsv, a BEIR corpus.jsonl, a dataset directory, or a dataset name (scifact).")
]
QueriesArg = Annotated[
    str,
    typer.Argument(
        help="Queries: BEIR queries.jsonl, QA .jsonl (question/answers), id<TAB>text .tsv, or NAME[:SPLIT] (scifact:test)."
    ),
]


class RetrieverKind(str, Enum):
    bm25 = "bm25"
    dense = "dense"
    hybrid = "hybrid"


class IndexKind(str, Enum):
    exact = "exact"
    flat = "flat"
    hnsw = "hnsw"
    ivfpq = "ivfpq"


class Precision(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Fusion(str, Enum):
    rrf = "rrf"
    interpolate = "interpolate"


def _echo_err(msg: str) -> None:
    typer.echo(msg, err=True)


@app.command()
def index(
    corpus: CorpusArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the index to (replaced atomically).")],
    retriever: Annotated[RetrieverKind, typer.Option(help="bm25, dense, or hybrid (both, fused at search time).")] = RetrieverKind.bm25,
    model: Annotated[
        str, typer.Option(help="Dense encoder: a Hugging Face hub id or a local path (a distillir-trained retriever too).")
    ] = "sentence-transformers/all-MiniLM-L6-v2",
    index_type: Annotated[IndexKind, typer.Option("--index", help="Dense search: exact (torch matmul), or FAISS flat / hnsw / ivfpq.")] = IndexKind.exact,
    batch_size: Annotated[int, typer.Option(help="Dense encoding batch size.")] = 64,
    passage_max_length: Annotated[int | None, typer.Option(help="Dense: passage max tokens (default: the encoder's setting).")] = None,
    dtype: Annotated[Precision, typer.Option(help="Dense encoding precision: float32, bfloat16 (fast on CPUs with AMX/avx512_bf16), float16 (GPU), auto (as the demo).")] = Precision.float32,
    quantize: Annotated[str | None, typer.Option(help="Dense on CPU: 'int8' dynamic quantisation for faster encoding.")] = None,
    k1: Annotated[float, typer.Option(help="BM25 k1.")] = 0.9,
    b: Annotated[float, typer.Option(help="BM25 b.")] = 0.4,
    fusion: Annotated[Fusion, typer.Option(help="Hybrid: reciprocal-rank fusion or normalised score interpolation.")] = Fusion.rrf,
    cache: Annotated[bool, typer.Option(help="Reuse cached corpus embeddings / BM25 indexes keyed by (corpus, model).")] = True,
) -> None:
    """Index a corpus with BM25, a dense encoder, or both (hybrid)."""
    from distillir.cli.inputs import resolve_corpus

    passages = resolve_corpus(corpus)
    typer.echo(f"corpus: {len(passages)} passages from {passages.source}", err=True)
    sparse = dense = None
    if retriever in (RetrieverKind.bm25, RetrieverKind.hybrid):
        from distillir.retrievers.bm25 import BM25Retriever, bm25_cached

        sparse = bm25_cached(passages, k1=k1, b=b) if cache else BM25Retriever.build(passages, k1=k1, b=b)
    if retriever in (RetrieverKind.dense, RetrieverKind.hybrid):
        from distillir.demo import default_encoding_dtype
        from distillir.retrievers.dense.retriever import DenseRetriever

        encoder_kwargs = {} if passage_max_length is None else {"passage_max_length": passage_max_length}
        dense = DenseRetriever.build(
            passages,
            model,
            index=index_type.value,
            batch_size=batch_size,
            dtype=default_encoding_dtype() if dtype is Precision.auto else dtype.value,
            quantize=quantize,
            cache=cache,
            show_progress=True,
            **encoder_kwargs,
        )
    if retriever is RetrieverKind.hybrid:
        from distillir.retrievers.hybrid import HybridRetriever

        built = HybridRetriever([sparse, dense], method=fusion.value)
    else:
        built = sparse or dense
    built.save(out)
    typer.echo(f"wrote {retriever.value} index to {out}", err=True)


@app.command()
def search(
    index_dir: Annotated[Path, typer.Argument(help="An index directory written by `distillir index`.")],
    queries: QueriesArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run file: .trec (TREC run format) or .jsonl (with passage texts; needs --corpus).")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Passages per query.")] = 100,
    corpus: Annotated[str | None, typer.Option(help="Corpus, to write texts (.jsonl) and to check the index was built from it.")] = None,
    qrels: Annotated[str | None, typer.Option(help="Search only the queries that appear in these qrels.")] = None,
) -> None:
    """Search an index; write a TREC run or a JSONL run with passage texts (what readers consume)."""
    from distillir.cli.inputs import resolve_corpus, resolve_qrels, resolve_queries
    from distillir.retrievers.base import load_index

    passages = resolve_corpus(corpus) if corpus else None
    retriever = load_index(index_dir, corpus=passages)
    ids = set(resolve_qrels(qrels)) if qrels else None
    qs = resolve_queries(queries, ids=ids)
    run = retriever.search(qs, top_k=top_k)
    if out.suffix == ".jsonl":
        if passages is None:
            raise typer.BadParameter("a .jsonl run holds passage texts: pass --corpus", param_hint="--out")
        run.write_jsonl(out, qs, passages)
    else:
        run.write_trec(out, tag=retriever.kind)
    typer.echo(f"searched {len(qs)} queries, wrote {out}", err=True)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="A run: TREC run file or distillir JSONL.")],
    qrels: Annotated[str | None, typer.Option(help="Qrels (BEIR .tsv or TREC) or NAME[:SPLIT]: nDCG@10, MRR@10, R@k, MAP.")] = None,
    answers: Annotated[str | None, typer.Option(help="QA .jsonl with answers: answer-string recall@k (needs --corpus).")] = None,
    corpus: Annotated[str | None, typer.Option(help="Corpus, for answer recall.")] = None,
    k: Annotated[str, typer.Option(help="Cut-offs for recall, comma-separated.")] = "1,5,20,100",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Evaluate a run against qrels and/or answers."""
    from distillir.cli.inputs import resolve_corpus, resolve_qrels, resolve_queries
    from distillir.evaluation import evaluate_run
    from distillir.evaluation.run import Run

    if not qrels and not answers:
        raise typer.BadParameter("give --qrels and/or --answers")
    ks = tuple(int(x) for x in k.split(",") if x.strip())
    the_run = Run.read(run)
    qs = resolve_queries(answers, default_split="dev") if answers else None
    if qs is not None and corpus is None:
        raise typer.BadParameter("answer recall needs --corpus", param_hint="--corpus")
    metrics = evaluate_run(
        the_run,
        qrels=resolve_qrels(qrels) if qrels else None,
        queries=qs,
        corpus=resolve_corpus(corpus) if corpus else None,
        ks=ks,
    )
    if as_json:
        typer.echo(json.dumps(metrics))
    else:
        for name, value in metrics.items():
            typer.echo(f"{name:>12}  {value:.4f}" if isinstance(value, float) else f"{name:>12}  {value}")


@app.command()
def rerank(
    run: Annotated[Path, typer.Argument(help="The run to re-rank (TREC or JSONL).")],
    queries: QueriesArg,
    corpus: CorpusArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Re-ranked run (.trec or .jsonl).")],
    model: Annotated[str, typer.Option(help="Cross-encoder: hub id or local path (e.g. from `distillir train cross-encoder`).")] = "sentence-transformers/all-MiniLM-L6-v2",
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Re-score this many passages per query.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Pairs per batch.")] = 64,
) -> None:
    """Re-rank a run's top-k with a cross-encoder."""
    from distillir.cli.inputs import resolve_corpus, resolve_queries
    from distillir.evaluation.run import Run
    from distillir.rankers.cross_encoder import CrossEncoder

    the_run = Run.read(run)
    passages = resolve_corpus(corpus)
    qs = resolve_queries(queries, ids=set(the_run))
    ranker = CrossEncoder.from_pretrained(model)
    reranked = ranker.rerank(the_run, qs, passages, top_k=top_k, batch_size=batch_size)
    if out.suffix == ".jsonl":
        reranked.write_jsonl(out, qs, passages)
    else:
        reranked.write_trec(out, tag="rerank")
    typer.echo(f"re-ranked {len(reranked)} queries, wrote {out}", err=True)


@app.command()
def train(
    recipe: Annotated[str, typer.Argument(help="Recipe name (see `distillir recipes`).")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config for the recipe.")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: --set trainer.max_steps=100 (repeatable).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in the output directory.")] = False,
) -> None:
    """Train with a recipe from a YAML config plus --set overrides."""
    from distillir.recipes import get_recipe
    from distillir.training.config import load_config

    recipe_cls = get_recipe(recipe)
    sets = list(overrides or [])
    if resume:
        sets.append("resume=true")
    cfg = load_config(recipe_cls.Config, config, sets)
    result = recipe_cls().run(cfg)
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
def recipes() -> None:
    """List the training recipes."""
    from distillir.recipes import RECIPES, get_recipe

    for name in sorted(RECIPES):
        doc = (get_recipe(name).__doc__ or "").strip().splitlines()
        typer.echo(f"{name:<16} {doc[0] if doc else ''}")


@app.command()
def demo(
    dataset: Annotated[str, typer.Option(help="Dataset name or directory (BEIR layout or squad-open layout).")] = "scifact",
    split: Annotated[str, typer.Option(help="Split to evaluate on.")] = "test",
    model: Annotated[str, typer.Option(help="Dense encoder (hub id or path).")] = "sentence-transformers/all-MiniLM-L6-v2",
    max_queries: Annotated[int | None, typer.Option(help="Evaluate on a fixed, seeded sample of queries.")] = None,
    top_k: Annotated[int, typer.Option(help="Depth of each run.")] = 100,
    dtype: Annotated[Precision, typer.Option(help="Dense encoding precision: auto (bfloat16 on CPUs with native bf16), float32, bfloat16, float16 (GPU).")] = Precision.auto,
) -> None:
    """The main job: BM25, the dense encoder and their RRF hybrid on a real dataset, side by side."""
    from distillir.demo import run_demo

    typer.echo(run_demo(dataset=dataset, split=split, model=model, max_queries=max_queries, top_k=top_k, dtype=dtype.value))


def main() -> None:
    from distillir.errors import DistillirError

    try:
        app()
    except DistillirError as e:
        _echo_err(f"error: {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
