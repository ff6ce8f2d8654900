"""The `distillir` command line: thin drivers over the library. Heavy imports happen inside commands,
so `distillir --help` stays fast."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from distillir.cli.options import Precision, echo_err
from distillir.models import DEFAULT_ENCODER

app = typer.Typer(
    name="distillir",
    help="Train neural retrievers without relevance labels, by distillation; index, search, re-rank, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

def _version(value: bool) -> None:
    if value:
        from distillir import __version__

        typer.echo(f"distillir {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Train neural retrievers without relevance labels, by distillation; index, search, re-rank, evaluate."""


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


class Fusion(str, Enum):
    rrf = "rrf"
    interpolate = "interpolate"


@app.command()
def index(
    corpus: CorpusArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the index to (atomically; an existing index only with --overwrite).")],
    retriever: Annotated[RetrieverKind, typer.Option(help="bm25, dense, or hybrid (both, fused at search time).")] = RetrieverKind.bm25,
    model: Annotated[
        str, typer.Option(help="Dense encoder: a Hugging Face hub id or a local path (a distillir-trained retriever too).")
    ] = DEFAULT_ENCODER,
    index_type: Annotated[IndexKind, typer.Option("--index", help="Dense search: exact (torch matmul), or FAISS flat / hnsw / ivfpq.")] = IndexKind.exact,
    batch_size: Annotated[int, typer.Option(min=1, help="Dense encoding batch size.")] = 64,
    passage_max_length: Annotated[int | None, typer.Option(help="Dense: passage max tokens (default: the encoder's setting).")] = None,
    dtype: Annotated[Precision, typer.Option(help="Dense encoding precision: float32, bfloat16 (fast on CPUs with AMX/avx512_bf16), float16 (GPU), auto (as the demo).")] = Precision.float32,
    quantize: Annotated[str | None, typer.Option(help="Dense on CPU: 'int8' dynamic quantisation for faster encoding.")] = None,
    k1: Annotated[float, typer.Option(help="BM25 k1.")] = 0.9,
    b: Annotated[float, typer.Option(help="BM25 b.")] = 0.4,
    fusion: Annotated[Fusion, typer.Option(help="Hybrid: reciprocal-rank fusion or normalised score interpolation.")] = Fusion.rrf,
    cache: Annotated[bool, typer.Option(help="Reuse cached corpus embeddings / BM25 indexes keyed by (corpus, model).")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an index already at --out.")] = False,
) -> None:
    """Index a corpus with BM25, a dense encoder, or both (hybrid)."""
    from distillir.cli.inputs import check_output_index, resolve_corpus

    check_output_index(out, overwrite)
    passages = resolve_corpus(corpus)
    typer.echo(f"corpus: {len(passages)} passages from {passages.source}", err=True)
    sparse = dense = None
    if retriever in (RetrieverKind.bm25, RetrieverKind.hybrid):
        from distillir.retrievers.bm25 import BM25Retriever, bm25_cached

        sparse = bm25_cached(passages, k1=k1, b=b) if cache else BM25Retriever.build(passages, k1=k1, b=b)
    if retriever in (RetrieverKind.dense, RetrieverKind.hybrid):
        from distillir.retrievers.dense.inference import default_encoding_dtype
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
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Passages per query.")] = 100,
    corpus: Annotated[str | None, typer.Option(help="Corpus, to write texts (.jsonl) and to check the index was built from it.")] = None,
    qrels: Annotated[str | None, typer.Option(help="Search only the queries that appear in these qrels.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Search an index; write a TREC run or a JSONL run with passage texts (what readers consume)."""
    from distillir.cli.inputs import check_output_file, resolve_corpus, resolve_qrels, resolve_queries
    from distillir.retrievers.base import load_index

    check_output_file(out, overwrite)
    if out.suffix == ".jsonl" and not corpus:
        raise typer.BadParameter("a .jsonl run holds passage texts: pass --corpus", param_hint="--out")
    passages = resolve_corpus(corpus) if corpus else None
    retriever = load_index(index_dir, corpus=passages)
    ids = set(resolve_qrels(qrels)) if qrels else None
    qs = resolve_queries(queries, ids=ids, of=f"the qrels {qrels}")
    run = retriever.search(qs, top_k=top_k)
    if out.suffix == ".jsonl":
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
    k: Annotated[str, typer.Option(help="Cut-offs for recall, comma-separated positive integers.")] = "1,5,20,100",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Evaluate a run against qrels and/or answers."""
    from distillir.cli.inputs import check_run, check_run_against_qrels, resolve_corpus, resolve_qrels, resolve_queries
    from distillir.data.run import Run
    from distillir.evaluation import evaluate_run

    if not qrels and not answers:
        raise typer.BadParameter("give --qrels and/or --answers")
    if answers and corpus is None:
        raise typer.BadParameter("answer recall needs --corpus", param_hint="--corpus")
    ks = _cutoffs(k)
    the_run = Run.read(run)
    passages = resolve_corpus(corpus) if corpus else None
    check_run(the_run, run, passages)
    judged = check_run_against_qrels(the_run, run, resolve_qrels(qrels), qrels, passages) if qrels else None
    qs = resolve_queries(answers, default_split="dev", ids=set(the_run), of=f"the run {run}") if answers else None
    metrics = evaluate_run(the_run, qrels=judged, queries=qs, corpus=passages, ks=ks)
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
    model: Annotated[str, typer.Option(help="Cross-encoder: hub id or local path (e.g. from `distillir train cross-encoder`).")] = DEFAULT_ENCODER,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Re-score this many passages per query.")] = 100,
    batch_size: Annotated[int, typer.Option(min=1, help="Pairs per batch.")] = 64,
    dtype: Annotated[str, typer.Option(help="Scoring precision: auto (bf16 where the CPU has it natively), float32, bfloat16.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Re-rank a run's top-k with a cross-encoder."""
    from distillir.cli.inputs import check_output_file, check_run, resolve_corpus, resolve_queries
    from distillir.data.run import Run
    from distillir.errors import ConfigError
    from distillir.rankers.cross_encoder import INFERENCE_DTYPES, CrossEncoder

    if dtype not in INFERENCE_DTYPES:
        raise ConfigError(f"--dtype must be auto, float32 or bfloat16, got {dtype!r}")
    check_output_file(out, overwrite)
    the_run = Run.read(run)
    passages = resolve_corpus(corpus)
    check_run(the_run, run, passages)
    qs = resolve_queries(queries, ids=set(the_run), of=f"the run {run}")
    ranker = CrossEncoder.from_pretrained(model).with_inference_dtype(dtype)
    reranked = ranker.rerank(the_run, qs, passages, top_k=top_k, batch_size=batch_size, show_progress=True)
    if out.suffix == ".jsonl":
        reranked.write_jsonl(out, qs, passages)
    else:
        reranked.write_trec(out, tag="rerank")
    typer.echo(f"re-ranked {len(reranked)} queries, wrote {out}", err=True)


class Scale(str, Enum):
    sigmoid = "sigmoid"
    relative = "relative"
    logit = "logit"


def _cutoffs(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated positive integers, got {text!r}", param_hint="--k") from None
    if not ks or min(ks) < 1:
        raise typer.BadParameter(f"expected comma-separated positive integers, got {text!r}", param_hint="--k")
    return ks


def _rank_range(text: str) -> tuple[int, int]:
    start, sep, end = text.partition(":")
    try:
        return (int(start or 0), int(end)) if sep else (0, int(start))
    except ValueError:
        raise typer.BadParameter(f"expected START:END (0-based, END excluded) or END, got {text!r}",
                                 param_hint="--ranks") from None


@app.command()
def mine(
    run: Annotated[Path, typer.Argument(help="The run to mine (TREC or JSONL): any retriever's top-N.")],
    queries: QueriesArg,
    corpus: CorpusArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Training lists (.jsonl): qid, query, positives, negatives.")],
    qrels: Annotated[str | None, typer.Option(help="Known positives: qrels (BEIR .tsv or TREC) or NAME[:SPLIT]; default: the queries' gold passage ids.")] = None,
    ranks: Annotated[str, typer.Option(help="Rank range START:END to mine from (0-based, END excluded).")] = "0:100",
    per_query: Annotated[int, typer.Option(help="Negatives kept per query.")] = 8,
    sample: Annotated[bool, typer.Option("--sample/--top", help="Draw at random within the range (seeded), or keep the best ranked.")] = True,
    exclude_answers: Annotated[bool, typer.Option("--exclude-answers/--keep-answers", help="Drop passages containing an answer (queries with answers).")] = True,
    ranker: Annotated[str | None, typer.Option(help="Cross-encoder that denoises (RocketQA): re-scores the range and relabels it by the thresholds.")] = None,
    pos_threshold: Annotated[float, typer.Option(help="With --ranker: scored at or above -> an extra positive.")] = 0.9,
    neg_threshold: Annotated[float, typer.Option(help="With --ranker: scored at or below -> a negative; in between -> dropped.")] = 0.1,
    scale: Annotated[Scale, typer.Option(help="With --ranker: what the thresholds compare with: sigmoid(logit), relative (sigmoid of logit minus the positive's), or the logit.")] = Scale.sigmoid,
    extra_positives: Annotated[bool, typer.Option("--extra-positives/--no-extra-positives", help="With --ranker: add passages above pos_threshold as positives.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of --sample.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Pairs per batch for --ranker.")] = 64,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Mine hard negatives from a run, with false-negative control: known positives, answer-containing
    passages and (with --ranker) passages the re-ranker scores as relevant never become negatives."""
    from distillir.cli.inputs import (
        check_output_file,
        check_run,
        max_depth,
        resolve_corpus,
        resolve_qrels,
        resolve_queries,
    )
    from distillir.data.negatives import build_examples, mine_negatives, relevant_passages, write_training_lists
    from distillir.data.run import Run
    from distillir.errors import InputError

    start, end = _rank_range(ranks)
    if not 0 <= start < end:
        raise typer.BadParameter(f"need 0 <= START < END, got {ranks!r}", param_hint="--ranks")
    if per_query < 1:
        raise typer.BadParameter(f"must be at least 1, got {per_query}", param_hint="--per-query")
    check_output_file(out, overwrite)
    the_run = Run.read(run)
    passages = resolve_corpus(corpus)
    check_run(the_run, run, passages)
    if start >= max_depth(the_run):
        raise typer.BadParameter(f"starts at rank {start}, but the run holds at most {max_depth(the_run)} "
                                 "passages per query", param_hint="--ranks")
    qs = resolve_queries(queries, default_split="train", ids=set(the_run), of=f"the run {run}")
    judged = resolve_qrels(qrels, default_split="train") if qrels else None
    positives = {qid: pids for qid, pids in relevant_passages(qs, judged).items() if qid in the_run}
    if not positives:
        raise InputError(qrels or queries, "no query of the run has a known positive passage (give --qrels, or "
                                           "queries with gold passage ids)")
    qs = qs.subset([qid for qid in qs.ids if qid in positives])
    report: dict = {"queries": len(qs), "ranks": [start, end]}
    if ranker is None:
        negatives = mine_negatives(the_run, qs, passages, positives, n=per_query, rank_range=(start, end),
                                   exclude_answers=exclude_answers, sample=sample, seed=seed)
        examples = build_examples(qs, positives, negatives)
        report["without_negatives"] = sum(not ex.negatives for ex in examples)
        examples = [ex for ex in examples if ex.negatives]  # nothing to contrast the positive with
    else:
        from distillir.rankers.cross_encoder import CrossEncoder
        from distillir.rankers.denoise import denoise_lists

        window = Run({qid: hits[start:end] for qid, hits in the_run.items()}, name=the_run.name)
        denoised = denoise_lists(CrossEncoder.from_pretrained(ranker), window, qs, passages, positives,
                                 depth=end - start, pos_threshold=pos_threshold, neg_threshold=neg_threshold,
                                 scale=scale.value, max_negatives=per_query, extra_positives=extra_positives,
                                 exclude_answers=exclude_answers, batch_size=batch_size, show_progress=True)
        examples = denoised.examples
        report["without_negatives"] = denoised.stats.lists_without_negatives
        report["denoise"] = denoised.stats.as_dict()
    write_training_lists(out, examples)
    report.update(lists=len(examples), negatives=sum(len(ex.negatives) for ex in examples))
    typer.echo(json.dumps(report))
    typer.echo(f"wrote {len(examples)} training lists to {out}", err=True)


from distillir.cli.jobs import demo, recipes, report, train  # registered after the data commands: --help order

app.command()(train)
app.command()(report)
app.command()(recipes)
app.command()(demo)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    echo_err(f"warning: {message}")  # one line a user can act on, not the warning machinery's source line


def main() -> None:
    import warnings

    from distillir.errors import DistillirError
    from distillir.utils.memory import keep_freed_memory

    warnings.showwarning = _show_warning
    keep_freed_memory()  # every command's large batches reuse freed pages (utils/memory.py)
    try:
        app()
    except DistillirError as e:
        echo_err(f"error: {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
