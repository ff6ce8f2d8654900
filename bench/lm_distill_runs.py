"""The runs of bench/lm_distill.py: each a shipped fid-kd config plus overrides, its run directory under
bench/work/runs/, the system name its tables use, and what it is set against (`versus`). The list is in
lm_distill.py's docstring."""

from __future__ import annotations

from _common import GEMMA, GEMMA_SETS, WORK_DIR

SQUAD = "configs/fid-kd-smollm2-squad-cpu.yaml"
BOTH_SETS = ["retriever.train_passages=true", "retriever.trainer.mixed_precision=native",
             "retriever.trainer.attention_dropout=0"]
SQUAD_SETS = ["max_train_queries=1000", "rounds=1", "retriever.trainer.max_steps=63", "eval.reader=false"]
GEMMA512_SCORES = WORK_DIR / "runs" / "fid-kd-gemma-scifact-512" / "round-1" / "teacher" / "scores.jsonl"
TOP1_SCORES = WORK_DIR / "runs" / "top1-lists-scifact" / "round-1" / "teacher" / "scores.jsonl"
GOLD_SCORES = WORK_DIR / "runs" / "gold-lists-scifact" / "round-1" / "teacher" / "scores.jsonl"
SMOLLM2_SCORES = WORK_DIR / "runs" / "fid-kd-smollm2-scifact" / "round-1" / "teacher" / "scores.jsonl"
RUNS = {
    "squad_ql": {"config": SQUAD, "dir": "fid-kd-smollm2-ql-1k",
                 "sets": [*SQUAD_SETS, "teacher.aggregation=question_likelihood"],
                 "system": "MiniLM distilled from SmolLM2 question likelihood (questions only)"},
    "squad_pdist": {"config": SQUAD, "dir": "fid-kd-smollm2-pdist-1k", "sets": [*SQUAD_SETS, "teacher.aggregation=pdist"],
                    "system": "MiniLM distilled from SmolLM2 pdist (questions + answers)"},
    # The pdist run's scores, as they are, under EMDR² instead of KL on z-scores (student only; no new scoring).
    # They are per-token means: for one answer per list, EMDR² on the sums with the teacher's log-probs divided
    # by the answer's token count.
    "squad_emdr2": {"config": SQUAD, "dir": "fid-kd-smollm2-pdist-1k-emdr2", "lists_dir": "fid-kd-smollm2-pdist-1k",
                    "sets": [*SQUAD_SETS, f"teacher_scores={WORK_DIR / 'runs' / 'fid-kd-smollm2-pdist-1k' / 'round-1' / 'teacher' / 'scores.jsonl'}",
                             "retriever.loss=emdr2", "teacher.normalize=none", "teacher.scale=1.0"],
                    "system": "MiniLM distilled from SmolLM2 pdist with EMDR² (questions + answers)",
                    "note": "EMDR² on the per-token mean log-likelihoods, raw (teacher.normalize none, scale 1)"},
    "squad_ranker": {"config": "configs/fid-kd-answers-squad-cpu.yaml", "dir": "fid-kd-ranker-1k",
                     "sets": ["max_train_queries=1000", "rounds=1", "teacher_scores=ranker",
                              f"teacher.ranker={WORK_DIR / 'runs' / 'ce-answers' / 'final'}",
                              "teacher.ranker_max_length=192", "retriever.trainer.max_steps=63"],
                     "system": "MiniLM distilled from the answer-trained cross-encoder",
                     "note": "not an LM: bench/ranker_answers.py's ranker (trained from QA pairs), for comparison; "
                             "its lists are the whole union (up to 20), not cut to 10"},
    "scifact_ql": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-smollm2-scifact", "sets": [],
                   "system": "MiniLM distilled from SmolLM2 claim likelihood (claims only)"},
    # Later rounds: the LM scores the previous round's retriever's lists (pairs scored before come from the cache).
    "scifact_ql_3r": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-smollm2-scifact-3r",
                      "sets": ["rounds=3"], "system": "MiniLM distilled from SmolLM2 claim likelihood, 3 rounds (claims only)"},
    # A second, larger LM as the teacher (issue 13): Gemma-3-270M base (not instruction-tuned, so plain prompts,
    # no chat template), the same claims, lists, prompt and student. The GGUF is written by the gemma3 packages
    # (see bench/lm_teacher.py's docstring) to GEMMA.
    "scifact_ql_gemma": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-gemma-scifact",
                         "sets": [*GEMMA_SETS],
                         "system": "MiniLM distilled from Gemma-3-270M claim likelihood (claims only)",
                         "needs": GEMMA},
    "scifact_ql_gemma_2r": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-gemma-scifact-2r",
                            "sets": [*GEMMA_SETS, "rounds=2"],
                            "system": "MiniLM distilled from Gemma-3-270M claim likelihood, 2 rounds (claims only)",
                            "needs": GEMMA},
    # Both towers (train_passages: the corpus re-embedded by the trained tower for evaluation): is the student's
    # passage side what limits it? bf16 where native and attention dropout off make a passage-length step about
    # 3.4x cheaper (bench/train_step.py); the first try, with neither, took 135-146 s a step.
    "scifact_ql_both": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-smollm2-scifact-both",
                        "sets": BOTH_SETS, "versus": "scifact_ql",
                        "system": "MiniLM, both towers, distilled from SmolLM2 claim likelihood (claims only)"},
    # Gemma's scores as they are, into both towers (student only; no new scoring).
    "scifact_gemma_both": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-gemma-scifact-both",
                           "lists_dir": "fid-kd-gemma-scifact",
                           "sets": [f"teacher_scores={WORK_DIR / 'runs' / 'fid-kd-gemma-scifact' / 'round-1' / 'teacher' / 'scores.jsonl'}",
                                    *BOTH_SETS],
                           "versus": "scifact_ql_gemma",
                           "system": "MiniLM, both towers, distilled from Gemma-3-270M claim likelihood (claims only)",
                           "needs": WORK_DIR / "runs" / "fid-kd-gemma-scifact" / "round-1" / "teacher" / "scores.jsonl"},
    # Gemma reading up to 512 tokens of each abstract instead of 192: most of SciFact's listed abstracts run past 192
    # Gemma tokens (`window_stats` measures how many), so the 192 window hides much of what a claim is written from.
    "scifact_ql_gemma_512": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-gemma-scifact-512",
                             "sets": [*GEMMA_SETS, "reader.passage_max_length=512"],
                             "versus": "scifact_ql_gemma", "versus_short": "192 tokens",
                             "versus_label": "the same teacher reading 192 tokens of each abstract, same lists and student",
                             "system": "MiniLM distilled from Gemma-3-270M claim likelihood over 512 abstract tokens (claims only)",
                             "window_stats": True, "needs": GEMMA},
    # How many claims the student needs: scifact_ql_gemma_512's scores over its first N lists (a seeded sample of
    # the claims), the same 91 steps (so more passes over fewer lists).
    **{f"scifact_gemma512_q{n}": {
        "config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": f"scale-gemma512-q{n}",
        "lists_dir": "fid-kd-gemma-scifact-512",
        "sets": [f"max_train_queries={n}", f"teacher_scores={GEMMA512_SCORES}", *GEMMA_SETS,
                 "reader.passage_max_length=512"],
        "versus": "scifact_ql_gemma_512", "versus_short": "809 claims",
        "versus_label": "the same teacher's scores over all 809 claims' lists, same steps",
        "system": f"MiniLM distilled from Gemma-3-270M claim likelihood over 512 abstract tokens, {n} claims",
        "note": f"a seeded sample of {n} train claims, scifact_ql_gemma_512's scores of their lists",
        "needs": GEMMA512_SCORES} for n in (200, 400)},
    # The labelled line for this student path: the same 809 lists, each passage scored 1 if the train qrels call it
    # relevant, else 0 (lists with none are skipped as uniform): what a perfect teacher of these lists would give.
    "scifact_gold_lists": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-gold-scifact",
                           "lists_dir": "gold-lists-scifact", "labels": True,
                           "sets": [f"teacher_scores={GOLD_SCORES}", *GEMMA_SETS, "reader.passage_max_length=512"],
                           "versus": "scifact_ql_gemma_512", "versus_short": "Gemma 512",
                           "versus_label": "Gemma's 512-token scores of the same lists, same student",
                           "system": "MiniLM taught the train qrels (gold) over the same lists (labels)",
                           "note": "labels: the train qrels as 0/1 scores over scifact_ql_gemma_512's lists",
                           "prepare": "gold", "needs": GEMMA512_SCORES},
    # The teacher's surest half of the lists only (teacher.keep_confident 0.5: the widest lead of its first passage
    # over its second), with the same steps: fewer lists, far more often right (student only; no new scoring).
    "scifact_gemma512_confident": {
        "config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-gemma-scifact-512-confident",
        "lists_dir": "fid-kd-gemma-scifact-512",
        "sets": [f"teacher_scores={GEMMA512_SCORES}", "teacher.keep_confident=0.5", *GEMMA_SETS,
                 "reader.passage_max_length=512"],
        "versus": "scifact_ql_gemma_512", "versus_short": "all lists",
        "versus_label": "the same teacher's scores over all the lists, same steps",
        "system": "MiniLM distilled from Gemma-3-270M claim likelihood over 512 abstract tokens, its surest half",
        "needs": GEMMA512_SCORES},
    "scifact_ql_confident": {
        "config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-smollm2-scifact-confident",
        "lists_dir": "fid-kd-smollm2-scifact",
        "sets": [f"teacher_scores={SMOLLM2_SCORES}", "teacher.keep_confident=0.5"],
        "versus": "scifact_ql", "versus_short": "all lists",
        "versus_label": "the same teacher's scores over all the lists, same steps",
        "system": "MiniLM distilled from SmolLM2 claim likelihood, its surest half of the lists (claims only)",
        "needs": SMOLLM2_SCORES},
    # Gemma's first passage of each list as a 0/1 target, the gold run's form with the teacher's knowledge (all 809
    # lists: choosing those with a relevant passage would read the labels): is it the targets' form or their truth?
    "scifact_gemma512_top1": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-gemma512-top1-scifact",
                              "lists_dir": "top1-lists-scifact",
                              "sets": [f"teacher_scores={TOP1_SCORES}", *GEMMA_SETS, "reader.passage_max_length=512"],
                              "versus": "scifact_gold_lists", "versus_short": "gold 0/1",
                              "versus_label": "the train qrels as 0/1 targets over the same lists (labels)",
                              "system": "MiniLM taught Gemma-3-270M's first passage of each list as a 0/1 target (claims only)",
                              "prepare": "top1", "needs": GEMMA512_SCORES},
    "squad_ql_gemma": {"config": SQUAD, "dir": "fid-kd-gemma-ql-1k",
                       "sets": [*SQUAD_SETS, "teacher.aggregation=question_likelihood", *GEMMA_SETS],
                       "system": "MiniLM distilled from Gemma-3-270M question likelihood (questions only)",
                       "needs": GEMMA},
}

__all__ = ["GEMMA512_SCORES", "GOLD_SCORES", "RUNS", "SMOLLM2_SCORES", "TOP1_SCORES"]
