"""FiD-KD benchmark ablations at equal steps, from the main run's round-1 reader and teacher scores: the loss
(KL / MSE / max-margin / raw scores / in-batch negatives), the teacher aggregation, the answer-string control,
and the teacher-extraction overhead. A mixin of `fid_kd.Bench` (its state: args, settings, work dir, results)."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fid_kd_settings import AGGREGATIONS, CONTROL, CONTROL_FILE, IN_BATCH, SEED, log, recipe_config


class Ablations:

    # ---- ablations ---------------------------------------------------------------------------

    def _teacher_run(self, name: str, scores_file: Path, loss: str, *extra: str) -> dict:
        """One round from the same student start, distilled from `scores_file` with `loss`."""
        from distillir.recipes.fid_kd import FiDKDRecipe

        out = self.work / "ablations" / name
        config = recipe_config(self.args, out, self.data_dir, "rounds=1", f"teacher_scores={scores_file}",
                               f"retriever.loss={loss}", "eval.start_retriever=false", "eval.reader=false", *extra)
        start = time.perf_counter()
        results = FiDKDRecipe().run(config)
        r = results["rounds"][0]
        log(f"ablation {name}: Top-5 {results['metrics']['Top-5']:.3f} ({time.perf_counter() - start:.1f} s)")
        return {"metrics": results["metrics"], "retriever": r["retriever"].get("train"),
                "agreement_after": r["retriever"].get("agreement_after"),
                "wall_s": {k: v for k, v in r["wall_s"].items()}}

    def _main_round1(self) -> dict:
        r = self.res["main"]["rounds"]["1"]
        return {"metrics": r["index"]["metrics"], "retriever": r["retriever"].get("train"),
                "agreement_after": r["retriever"].get("agreement_after"), "note": "= the main run's round 1"}

    def loss_ablation(self) -> None:
        section = self.res["ablations"].setdefault("loss", {})
        section["kl"] = self._main_round1()
        scores = self.work / "main" / "round-1" / "teacher" / "scores.jsonl"
        for loss in ("mse", "margin"):
            if section.get(loss) is None:
                log(f"loss ablation: {loss}")
                section[loss] = self._teacher_run(f"loss-{loss}", scores, loss)
                self.save()
        raw = "kl, raw scores"
        if section.get(raw) is None:  # the paper's targets: softmax of the unstandardised attention scores
            log("loss ablation: kl on raw teacher scores (normalize: none)")
            section[raw] = {**self._teacher_run("loss-kl-raw", scores, "kl", "teacher.normalize=none"),
                            "note": "teacher scores not standardised (the paper)"}
            self.save()
        if section.get(IN_BATCH) is None:  # not in the paper: other questions' lists as negatives
            log("loss ablation: kl + in-batch negatives")
            section[IN_BATCH] = {**self._teacher_run("loss-kl-in-batch", scores, "kl",
                                                     "retriever.in_batch_negatives=true"),
                                 "note": "retriever.in_batch_negatives: true (not in the paper)"}
            self.save()

    def _round1_reader(self):
        from distillir.recipes.common.reading import build_reader, torch_device

        config = recipe_config(self.args, self.work / "main", self.data_dir)
        reader = build_reader(config.reader, config.n_passages, SEED,
                              warm_start=self.work / "main" / "round-1" / "reader" / "final")
        reader.to(torch_device(self.args.device == "cpu"))
        return config, reader

    def aggregation_ablation(self) -> None:
        from distillir.readers.fid_data import load_fid_examples
        from distillir.recipes.common.reading import score_teacher

        section = self.res["ablations"].setdefault("aggregation", {})
        section["fid"] = self._main_round1()
        todo = [a for a in AGGREGATIONS if a != "fid" and section.get(a) is None]
        if not todo:
            return
        config, reader = None, None
        examples = load_fid_examples(self.work / "main" / "round-1" / "retrieve" / "train.jsonl")
        for agg in todo:
            path = self.work / "ablations" / f"scores-{agg}.jsonl"
            score_s = None
            if not path.is_file():
                if reader is None:
                    config, reader = self._round1_reader()
                log(f"aggregation ablation: scoring {len(examples)} questions with {agg}")
                start = time.perf_counter()
                scores = score_teacher(reader, examples, agg, n_passages=config.n_passages,
                                       batch_size=config.reader.batch_size, dtype=config.reader.inference_dtype)
                score_s = round(time.perf_counter() - start, 1)
                scores.write(path)
            result = self._teacher_run(f"agg-{agg}", path, "kl")
            result["scoring_s"] = score_s
            section[agg] = result
            self.save()

    def answer_control(self) -> None:
        """The same round-1 distillation from the answer-string teacher (no model): what a teacher that
        knows where the answers are does to this student, at the same steps."""
        from distillir.readers.fid_data import load_fid_examples
        from distillir.teachers.answers import answer_match_scores

        section = self.res["ablations"].setdefault("aggregation", {})
        path = self.work / "ablations" / f"scores-{CONTROL_FILE}.jsonl"
        if not path.is_file():
            answer_match_scores(load_fid_examples(self.work / "main" / "round-1" / "retrieve" / "train.jsonl")
                                ).write(path)
        if section.get(CONTROL) is None:
            log("control: distilling the answer-string teacher")
            section[CONTROL] = {**self._teacher_run(f"agg-{CONTROL_FILE}", path, "kl"),
                                "note": "no reader: 1 if the passage contains an answer string, else 0"}
            self.save()
        key = f"{CONTROL}, {IN_BATCH}"
        if section.get(key) is None:
            log("control: the answer-string teacher, kl + in-batch negatives")
            section[key] = {**self._teacher_run(f"agg-{CONTROL_FILE}-in-batch", path, "kl",
                                                "retriever.in_batch_negatives=true"),
                            "note": "the control with retriever.in_batch_negatives: true"}
            self.save()

    # ---- overhead ----------------------------------------------------------------------------

    def overhead(self) -> None:
        if self.res.get("overhead") is not None:
            return
        import torch

        from distillir.readers.fid_data import load_fid_examples
        from distillir.recipes.common.reading import inference_autocast
        from distillir.teachers.attention import attention_scores
        from distillir.teachers.likelihood import answer_log_likelihood

        config, reader = self._round1_reader()
        reader.eval()
        device = str(reader.device)
        bs = config.reader.batch_size
        examples = load_fid_examples(self.work / "main" / "round-1" / "retrieve" / "train.jsonl")
        chunks = [examples[i:i + bs] for i in range(0, min(len(examples), bs * self.s["overhead_batches"]), bs)]
        with_labels = reader.collator(config.n_passages, labels=True)
        no_labels = reader.collator(config.n_passages, labels=False)
        batches = [with_labels(c).to(device) for c in chunks]
        bare = [no_labels(c).to(device) for c in chunks]
        questions = sum(len(b) for b in batches)

        def sync():
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        variants = {
            "plain": lambda i: reader(**batches[i].model_inputs()),
            # The reader captures the attention in the same forward (with the loss); the teacher aggregates it.
            "fid (same pass, with labels)": lambda i: attention_scores(reader, batches[i], "fid"),
            "post_softmax (same pass)": lambda i: attention_scores(reader, batches[i], "post_softmax"),
            "all_tokens (same pass)": lambda i: attention_scores(reader, batches[i], "all_tokens"),
            "adist (same pass)": lambda i: attention_scores(reader, batches[i], "adist"),
            "fid, first token, no labels": lambda i: attention_scores(reader, bare[i], "fid"),
            "pdist (n single-passage decodes)": lambda i: answer_log_likelihood(reader, batches[i]),
        }
        repeats = 5
        times: dict[str, list[float]] = {k: [] for k in variants}
        with torch.no_grad(), inference_autocast(config.reader.inference_dtype, device):
            for fn in variants.values():  # warm-up
                fn(0)
            for _ in range(repeats):
                for name, fn in variants.items():
                    sync()
                    start = time.perf_counter()
                    for i in range(len(batches)):
                        fn(i)
                    sync()
                    times[name].append(time.perf_counter() - start)
        plain = times["plain"]
        result = {"batches": len(batches), "batch_size": bs, "repeats": repeats, "questions": questions,
                  "plain_ms_per_question": 1000 * statistics.median(plain) / questions, "variants": {}}
        for name, ts in times.items():
            if name == "plain":
                continue
            ratio = statistics.median([t / p for t, p in zip(ts, plain)])
            result["variants"][name] = {"ms_per_question": 1000 * statistics.median(ts) / questions,
                                        "ratio": ratio}
        self.res["overhead"] = result
        log("teacher overhead: " + ", ".join(f"{k} {v['ratio']:.3f}x" for k, v in result["variants"].items()))
        self.save()
