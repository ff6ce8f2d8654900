"""Two processes (torchrun, gloo on CPU) give what one process gives: sharded corpus encoding equals one
process's, cross-device negatives equal one process with the global batch, and a recipe trains and resumes
under two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent


def torchrun(tmp_path: Path, script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(path), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


ENCODE = """
import sys, torch
from distillir.data.loaders import load_corpus
from distillir.retrievers.dense.encoder import BiEncoder
from distillir.retrievers.dense.inference import encode_corpus_cached
from distillir.utils.dist import process_state
torch.set_num_threads(1)
corpus = load_corpus(sys.argv[2])
emb = encode_corpus_cached(BiEncoder.from_pretrained(sys.argv[1]), corpus, batch_size=3, directory=sys.argv[3],
                           all_processes=True)
state = process_state()
assert state.num_processes == 2
torch.save(emb, f"{sys.argv[3]}/rank{state.process_index}.pt")
torch.distributed.destroy_process_group()
"""


def test_sharded_corpus_encoding_equals_one_process(tiny_bert_dir, tmp_path, one_thread):
    from distillir.data.loaders import load_corpus
    from distillir.data.toy import write_toy_beir
    from distillir.retrievers.dense.encoder import BiEncoder
    from distillir.retrievers.dense.inference import encode_corpus_cached

    corpus_file = write_toy_beir(tmp_path / "toy") / "corpus.jsonl"
    shared = tmp_path / "emb"
    torchrun(tmp_path, ENCODE, tiny_bert_dir, corpus_file, shared)
    one = encode_corpus_cached(BiEncoder.from_pretrained(tiny_bert_dir), load_corpus(corpus_file), batch_size=3,
                               directory=tmp_path / "single")
    r0, r1 = torch.load(shared / "rank0.pt"), torch.load(shared / "rank1.pt")
    assert torch.equal(r0, one) and torch.equal(r1, one)
    assert len(list(shared.glob("*.shard-*"))) == 0 and len(list(shared.glob("*.shards.json"))) == 1
    # The merged file is the cache entry: one process finds it and encodes nothing.
    again = encode_corpus_cached(BiEncoder.from_pretrained(tiny_bert_dir), load_corpus(corpus_file), batch_size=3,
                                 directory=shared)
    assert torch.equal(again, one)


CONTRASTIVE = """
import sys, torch
import torch.distributed as dist
from distillir.losses.contrastive import ContrastiveLoss
from distillir.utils.dist import process_state
state = process_state()
rank, world = state.process_index, state.num_processes
torch.manual_seed(0)
proj = torch.nn.Linear(6, 4)
q_all, p_all, n_all = torch.randn(4, 6), torch.randn(4, 6), torch.randn(6, 6)
mask_all = torch.zeros(4, 10, dtype=torch.bool)
mask_all[0, 1] = True  # query 0: passage 1 (query 1's positive, on the same rank) is a false negative

def grads(loss):
    proj.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in proj.parameters()]

# One process, the global batch: [positives of all; negatives of all].
full = ContrastiveLoss()(proj(q_all), proj(p_all), proj(n_all), mask_all)
want = grads(full)
# This rank's half: 2 queries, their positives, its 3 negatives; every rank's passages gathered.
sl, nl = slice(2 * rank, 2 * rank + 2), slice(3 * rank, 3 * rank + 3)
local_mask = torch.cat([mask_all[sl][:, sl], mask_all[sl][:, 4 + 3 * rank: 4 + 3 * rank + 3]], dim=1)
part = ContrastiveLoss(cross_device=True)(proj(q_all[sl]), proj(p_all[sl]), proj(n_all[nl]), local_mask)
got = grads(part)
for g in got:  # what DDP does: average the gradients
    dist.all_reduce(g)
    g /= world
loss = part.detach().clone()
dist.all_reduce(loss)
assert torch.allclose(loss / world, full, atol=1e-6), (loss / world, full)
assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want)), (got, want)
without = ContrastiveLoss()(proj(q_all[sl]), proj(p_all[sl]), proj(n_all[nl]), local_mask)
assert not torch.allclose(without, part)  # and it matters: local negatives alone give another loss
print("ok", rank)
dist.destroy_process_group()  # gloo's threads end before the interpreter does
"""


def test_cross_device_negatives_equal_one_process_with_the_global_batch(tmp_path):
    proc = torchrun(tmp_path, CONTRASTIVE)
    assert proc.stdout.count("ok") == 2


DPR = """
import sys, json
sys.path.insert(0, sys.argv[4])
from recipe_smoke import settings
from distillir.recipes import get_recipe
from distillir.training.config import load_config
from distillir.training.state import TrainerCallback
from distillir.utils.dist import process_state

class StopAt(TrainerCallback):
    def on_step_end(self, trainer):
        if trainer.state.global_step == 3:
            raise KeyboardInterrupt

bert, beir, out, _, mode = sys.argv[1:6]
sets = [s for s in settings(bert, beir, beir)["dpr"] if not s.startswith("eval.")]
sets += [f"output_dir={out}", "trainer.per_device_batch_size=2", "trainer.save_steps=2",
         "trainer.cross_device_negatives=true", f"resume={'true' if mode == 'resume' else 'false'}"]
recipe = get_recipe("dpr")
config = load_config(recipe.Config, None, sets)
try:
    result = recipe().run(config, callbacks=[StopAt()] if mode == "kill" else [])
except KeyboardInterrupt:
    import torch.distributed
    torch.distributed.destroy_process_group()
    sys.exit(0)
if process_state().is_main_process:
    json.dump(result["train"], open(f"{out}/train-{mode}.json", "w"))
import torch.distributed
torch.distributed.destroy_process_group()
"""


def test_dpr_trains_and_resumes_under_two_processes(tiny_bert_dir, tmp_path):
    from distillir.data.toy import write_toy_beir
    from distillir.training.checkpoint import list_checkpoints, load_checkpoint

    beir = write_toy_beir(tmp_path / "toy")
    scripts = HERE.parent / "scripts"
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    torchrun(tmp_path, DPR, tiny_bert_dir, beir, out_a, scripts, "whole")
    torchrun(tmp_path, DPR, tiny_bert_dir, beir, out_b, scripts, "kill")
    assert [s for s, _ in list_checkpoints(out_b)] == [2]
    torchrun(tmp_path, DPR, tiny_bert_dir, beir, out_b, scripts, "resume")
    a, b = (json.loads((o / f"train-{m}.json").read_text()) for o, m in ((out_a, "whole"), (out_b, "resume")))
    assert b["resumed_from"].endswith("step-2") and a["global_step"] == b["global_step"] == 4
    assert load_checkpoint(out_b / "checkpoints" / "step-4")["state"]["num_processes"] == 2
    wa = load_checkpoint(out_a / "checkpoints" / "step-4")["model"]
    wb = load_checkpoint(out_b / "checkpoints" / "step-4")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


FAMILIES = """
import sys, json
sys.path.insert(0, sys.argv[1])
from recipe_smoke import settings
from distillir.recipes import get_recipe
from distillir.training.config import load_config
from distillir.utils.dist import process_state
import torch.distributed
bert, beir, qa, out = sys.argv[2:6]
rank = process_state().process_index
for name in ("fid-kd", "rocketqa-v2", "re2g"):
    recipe = get_recipe(name)
    result = recipe().run(load_config(recipe.Config, None, [*settings(bert, beir, qa)[name], f"output_dir={out}/{name}"]))
    found = {k: v for k, v in result.items() if k in ("complete", "train_examples", "train_questions", "lists")}
    json.dump(found, open(f"{out}/{name}-rank{rank}.json", "w"), sort_keys=True, default=str)
torch.distributed.destroy_process_group()
"""


def test_one_recipe_per_family_runs_end_to_end_under_two_processes(tiny_bert_dir, tmp_path):
    """Reader distillation (fid-kd), retriever-ranker co-training (rocketqa-v2), retrieve-rerank-generate
    (re2g): every stage runs, the main process writes, and both processes end with the same results."""
    from distillir.data.toy import write_toy_beir, write_toy_qa

    out = tmp_path / "out"
    out.mkdir()
    torchrun(tmp_path, FAMILIES, HERE.parent / "scripts", tiny_bert_dir, write_toy_beir(tmp_path / "beir"),
             write_toy_qa(tmp_path / "qa"), out, timeout=600)
    for name in ("fid-kd", "rocketqa-v2", "re2g"):
        r0, r1 = ((out / f"{name}-rank{r}.json").read_text() for r in (0, 1))
        assert r0 == r1 and r0 != "{}", name  # both processes trained on the same lists
        results = json.loads((out / name / "results.json").read_text())  # evaluated once, by the main process
        assert (results.get("metrics") or results.get("final_metrics")) and (out / name / "report.md").is_file(), name


SCORING = """
import sys, json
import torch.distributed
from distillir.teachers.across_processes import score_across_processes
from distillir.teachers.scores import TeacherScores
from distillir.utils.dist import process_state
state = process_state()
examples = [{"id": f"q{i}", "question": f"question {i}", "answers": [str(i)],
             "ctxs": [{"id": f"p{j}", "text": "x" * (i * j + 1)} for j in range(3)]} for i in range(7)]
seen = []

def score(part):
    seen.extend(ex["id"] for ex in part)
    out = TeacherScores("length")
    for ex in part:
        out.add(ex["id"], [c["id"] for c in ex["ctxs"]], [float(len(c["text"])) for c in ex["ctxs"]],
                query=ex["question"], answers=ex["answers"])
    return out

scores = score_across_processes(score, examples)
json.dump({"seen": seen, "rows": [[q, *scores[q]] for q in scores], "teacher": scores.teacher,
           "answers": scores.answers}, open(f"{sys.argv[1]}/rank{state.process_index}.json", "w"))
torch.distributed.destroy_process_group()
"""


def test_teacher_scoring_shared_out_equals_one_process(tmp_path):
    torchrun(tmp_path, SCORING, tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["seen"] == ["q0", "q2", "q4", "q6"] and r1["seen"] == ["q1", "q3", "q5"]  # each scored its share
    want = [[f"q{i}", [f"p{j}" for j in range(3)], [float(i * j + 1) for j in range(3)]] for i in range(7)]
    assert r0["rows"] == r1["rows"] == want  # every process has all of them, in the lists' order
    assert r0["teacher"] == "length" and r0["answers"]["q3"] == ["3"]


@pytest.mark.parametrize("name", ["ar2", "cross-encoder", "dgr", "dpr", "fid-kd", "re2g", "rocketqa-v2"])
def test_every_recipe_has_a_gpu_config_stating_its_global_batch(name):
    from distillir.recipes import RECIPES, get_recipe
    from distillir.training.config import load_config

    assert name in RECIPES
    path = HERE.parent / "configs" / f"{name}-gpu.yaml"
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert "Global batch = per_device_batch_size x gradient_accumulation_steps x processes" in header
    assert "torchrun --nproc_per_node" in header and f"train {name} --config configs/{name}-gpu.yaml" in header
    config = load_config(get_recipe(name).Config, path)
    if name == "dpr":  # the paper's 128 questions per step over 8 GPUs, negatives shared across them
        t = config.trainer
        assert t.per_device_batch_size * t.gradient_accumulation_steps * 8 == 128 and t.cross_device_negatives


LIST_LOSS = """
import sys, torch
import torch.distributed as dist
from distillir.data.types import Corpus
from distillir.losses.in_batch_list import InBatchListLoss
from distillir.losses.kl_divergence import KLDivergenceLoss
from distillir.recipes.common.distill import ListCollator, ListDistillLoss, ListExample
from distillir.retrievers.dense.encoder import BiEncoder
from distillir.utils.dist import process_state
torch.set_num_threads(1)
state = process_state()
rank, world = state.process_index, state.num_processes
encoder = BiEncoder.from_pretrained(sys.argv[1], passage_max_length=16, query_max_length=16).eval()  # no dropout
corpus = Corpus([f"p{i}" for i in range(12)], [f"passage number {i} about topic {i % 3}" for i in range(12)],
                [""] * 12)
# Lists of unequal lengths (3 and 2 passages): padding and masks must line up across processes.
lists = [ListExample(f"q{i}", f"question {i} on topic {i % 3}", [f"p{(3 * i + j) % 12}" for j in range(3 - i % 2)],
                     [float(j) for j in range(3 - i % 2)]) for i in range(4)]
collate = ListCollator(encoder, corpus)

def run(examples, cross_device):
    encoder.zero_grad()
    loss = ListDistillLoss(KLDivergenceLoss(), InBatchListLoss(), cross_device)(encoder, collate(examples))
    loss.backward()
    return loss.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in encoder.parameters()]

want_loss, want = run(lists, False)  # one process, the global batch of 4 lists
loss, got = run(lists[2 * rank: 2 * rank + 2], True)
dist.all_reduce(loss)
for g in got:
    dist.all_reduce(g)
assert torch.allclose(loss / world, want_loss, atol=1e-5), (loss / world, want_loss)
# float32 sums in another order: equal to ~1e-6 of the gradient's size
worst = max(float((g / world - w).abs().max()) for g, w in zip(got, want))
scale = max(float(w.abs().max()) for w in want)
assert worst <= 1e-5 * scale, (worst, scale)
local_loss, _ = run(lists[2 * rank: 2 * rank + 2], False)
assert not torch.allclose(local_loss, loss / world)  # the other process's lists do change the loss
print("ok", rank)
dist.destroy_process_group()
"""


def test_cross_device_list_negatives_equal_one_process_with_the_global_batch(tiny_bert_dir, tmp_path):
    assert torchrun(tmp_path, LIST_LOSS, tiny_bert_dir).stdout.count("ok") == 2
