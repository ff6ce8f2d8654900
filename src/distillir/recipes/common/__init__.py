"""What recipes share, so that a recipe reads as a config plus a list of stages (no recipe imports another):

- `run`: the `Recipe` base, the run directory (create, refuse to overwrite, resume), seeding, named `Stages`
  with done-markers, training phases.
- `config`: shared config blocks (training split, evaluation sections, `ReaderConfig`, `RankerWarmup`).
- `lists`: training lists built once, written to the run directory and read back (mined, given, labelled).
- `ranking`: the ranker side (candidate-list collator, a resumable ranker phase, warm-up, re-ranking, eval).
- `retrieval`: the dense-retriever side (loading, list scores, candidates, evaluation).
- `distill`: the student side of list distillation (targets, collator, scores, loss, agreement).
- `reading`: the reader side (building a seq2seq reader, its loss, inference precision, QA questions).
"""
