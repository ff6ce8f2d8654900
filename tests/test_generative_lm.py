"""The causal-LM generative retriever on a tiny Llama built from a config: identifiers scored after the prompt
against a full forward by hand, constrained beam search returning real passages at their forced scores, only
the last layers training, save and load."""

from __future__ import annotations

import pytest
import torch

from distillir.data.loaders import load_corpus
from distillir.data.toy import write_toy_beir
from distillir.readers.causal_lm import CausalLMReader
from distillir.readers.generative_lm import CausalGenerativeRetriever, load_generative_retriever
from distillir.readers.prompts import PromptTemplate
from distillir.readers.rag_lm import train_last_layers
from distillir.retrievers.generative import make_docids

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def student(tmp_path, tiny_lm_dir):
    corpus = load_corpus(write_toy_beir(tmp_path / "tiny"))
    lm = CausalLMReader.from_pretrained(tiny_lm_dir, prompts=PromptTemplate(chat=False))
    return CausalGenerativeRetriever(lm, corpus.ids, make_docids(corpus), query_max_length=16, docid_max_length=12)


def test_identifier_scores_match_a_full_forward(student):
    q = student.tokenize_queries(["what do scientists study about the volcano", "glacier"])
    labels = student.docid_labels(["d0a", "d1a", "d2b", "d0b"])
    with torch.no_grad():
        got = student.score(q, labels, per_query=2)
        for i, (query, pids) in enumerate((("what do scientists study about the volcano", ["d0a", "d1a"]),
                                           ("glacier", ["d2b", "d0b"]))):
            prompt = student._prompt_ids(query)
            for j, pid in enumerate(pids):
                docid = student.docid_tokens[student.row_of_pid[pid]]
                log_probs = torch.log_softmax(student.model(input_ids=torch.tensor([prompt + docid])).logits[0], -1)
                want = sum(float(log_probs[len(prompt) - 1 + k, t]) for k, t in enumerate(docid))
                assert got[i, j].item() == pytest.approx(want, abs=1e-4)


def test_search_returns_real_passages_at_their_forced_scores(student):
    run = student.search({"q": "what do scientists study about the volcano", "r": "glacier"}, top_k=3, batch_size=2)
    for qid, text in (("q", "what do scientists study about the volcano"), ("r", "glacier")):
        hits = run[qid]
        assert 1 <= len(hits) <= 3 and all(pid in student.row_of_pid for pid, _ in hits)
        with torch.no_grad():
            forced = student.score(student.tokenize_queries([text]), student.docid_labels([p for p, _ in hits]),
                                   per_query=len(hits))[0]
        torch.testing.assert_close(forced, torch.tensor([s for _, s in hits]), rtol=1e-3, atol=1e-3)


def test_last_layer_trains_and_the_retriever_saves_and_loads(student, tmp_path):
    train_last_layers(student.lm, 1)
    loss = -student.score(student.tokenize_queries(["glacier"]), student.docid_labels(["d1a"]))[0, 0]
    loss.backward()
    assert all(p.grad is not None for p in student.model.base_model.layers[-1].parameters())
    assert all(p.grad is None for p in student.model.base_model.layers[0].parameters())
    student.save_pretrained(tmp_path / "saved")
    loaded = load_generative_retriever(tmp_path / "saved")
    assert isinstance(loaded, CausalGenerativeRetriever) and loaded.docids == student.docids
    q, labels = student.tokenize_queries(["glacier"]), student.docid_labels(["d1a", "d2b"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(q, labels, per_query=2), student.score(q, labels, per_query=2))
