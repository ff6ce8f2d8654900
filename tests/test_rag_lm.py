"""A causal LM reading each passage alone, marginalised (readers.rag_lm), on a tiny Llama built from a config:
RAG-token / RAG-sequence marginals against per-passage scores by hand, gradients to the weights and to the last
layers only, greedy mixture decoding against plain greedy decoding of one prompt, and shared prompts."""

from __future__ import annotations

import math

import pytest
import torch

from distillir.errors import ConfigError
from distillir.readers.causal_lm import CausalLMReader
from distillir.readers.rag_lm import (
    generate_mixtures,
    marginal_generate,
    marginal_log_likelihood,
    predict_systems,
    token_log_probs,
    train_last_layers,
)

pytestmark = pytest.mark.usefixtures("one_thread")

A = {"id": "a", "title": "Volcano", "text": "The survey was led by Alvarez in the north."}
B = {"id": "b", "title": "Comet", "text": "Comets are beautiful."}
Q = "who led the survey"


@pytest.fixture()
def reader(tiny_lm_dir):
    return CausalLMReader.from_pretrained(tiny_lm_dir, passage_max_tokens=24)


def per_token(reader, passage, answer):
    """log p(answer_t | prompt, answer_<t) from one full forward (all logits), by hand."""
    p = reader._prompt_ids(reader.read_prompt(Q, passage["title"], passage["text"]))
    t = reader.tokenizer(reader.target_text(answer), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        log_probs = torch.log_softmax(reader.model(input_ids=torch.tensor([p + t])).logits[0].float(), -1)
    return torch.tensor([float(log_probs[len(p) - 1 + j, tok]) for j, tok in enumerate(t)])


def test_token_log_probs_match_a_full_forward_and_pad_to_zero(reader):
    pa = reader._prompt_ids(reader.read_prompt(Q, A["title"], A["text"]))
    pb = reader._prompt_ids(reader.read_prompt(Q, B["title"], B["text"]))
    long, short = [reader.tokenizer(reader.target_text(x), add_special_tokens=False)["input_ids"]
                   for x in ("Alvarez of the north", "Alvarez")]
    with torch.no_grad():
        token, valid = token_log_probs(reader, [pa, pb], [long, short])
    torch.testing.assert_close(token[0], per_token(reader, A, "Alvarez of the north"), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(token[1, : len(short)], per_token(reader, B, "Alvarez"), rtol=1e-4, atol=1e-4)
    assert valid[1].tolist() == [True] * len(short) + [False] * (len(long) - len(short))
    assert (token[1, len(short):] == 0).all()


def test_marginals_by_hand(reader):
    la, lb = per_token(reader, A, "Alvarez"), per_token(reader, B, "Alvarez")
    w = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        tok, n_tokens = marginal_log_likelihood(reader, [Q], [[A, B]], ["Alvarez"], w.log()[None], "token")
        seq, _ = marginal_log_likelihood(reader, [Q], [[A, B]], ["Alvarez"], w.log()[None], "sequence")
        one, _ = marginal_log_likelihood(reader, [Q], [[A, B]], ["Alvarez"], torch.tensor([[0.0, -math.inf]]))
    expected_token = sum(math.log(0.3 * math.exp(a) + 0.7 * math.exp(b)) for a, b in zip(la.tolist(), lb.tolist()))
    expected_sequence = math.log(0.3 * math.exp(la.sum()) + 0.7 * math.exp(lb.sum()))
    assert tok.item() == pytest.approx(expected_token, abs=1e-4)
    assert seq.item() == pytest.approx(expected_sequence, abs=1e-4)
    assert one.item() == pytest.approx(la.sum().item(), abs=1e-4)  # all weight on A: A's likelihood
    assert n_tokens.tolist() == [len(la)]


def test_gradient_reaches_the_weights_and_the_last_layers_only(reader):
    assert train_last_layers(reader, 0) == 0
    assert not any(p.requires_grad for p in reader.model.parameters())
    trainable = train_last_layers(reader, 1)
    last = reader.model.base_model.layers[-1]
    assert trainable == sum(p.numel() for p in last.parameters()) + reader.model.base_model.norm.weight.numel()
    scores = torch.tensor([[0.5, -0.2]], requires_grad=True)
    ll, _ = marginal_log_likelihood(reader, [Q], [[A, B]], ["Alvarez"], torch.log_softmax(scores, 1), "token")
    ll.sum().backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0
    assert all(p.grad is not None for p in last.parameters())
    assert all(p.grad is None for p in reader.model.base_model.layers[0].parameters())
    assert reader.model.base_model.embed_tokens.weight.grad is None
    with pytest.raises(ConfigError, match="layers"):
        train_last_layers(reader, 3)


def test_one_hot_mixture_decodes_as_plain_greedy_on_that_prompt(reader):
    reader.model.generation_config.eos_token_id = None  # a random LM: decode the full length
    plain = reader.generate([reader.read_prompt(Q, A["title"], A["text"])], max_new_tokens=5)[0]
    got = marginal_generate(reader, [Q, Q], [[A, B], [B, A]], torch.tensor([[0.0, -math.inf], [-math.inf, 0.0]]),
                            max_new_tokens=5)
    assert got == [plain, plain]  # left padding and the copied cache rows change nothing


def test_shared_prompts_are_encoded_once_and_give_each_system_its_answer(reader):
    reader.model.generation_config.eos_token_id = None
    systems = {"ab": [{"id": "q1", "question": Q, "ctxs": [{**A, "score": 2.0}, {**B, "score": 0.0}]}],
               "b": [{"id": "q1", "question": Q, "ctxs": [{**B, "score": 1.0}]}]}
    seen = []
    got = predict_systems(reader, systems, n_passages=2, max_new_tokens=4, progress=False,
                          done=lambda *row: seen.append(row))
    prompts = [reader._prompt_ids(reader.read_prompt(Q, p["title"], p["text"])) for p in (A, B)]
    w = torch.log_softmax(torch.tensor([2.0, 0.0]), 0)
    assert got["ab"]["q1"] == generate_mixtures(reader, prompts, [([0, 1], w)], 4)[0]
    assert got["b"]["q1"] == generate_mixtures(reader, prompts[1:], [([0], torch.zeros(1))], 4)[0]
    assert sorted(seen) == [("ab", "q1", got["ab"]["q1"]), ("b", "q1", got["b"]["q1"])]


def test_a_shared_preamble_is_encoded_once_and_changes_no_answer(tiny_lm_dir):
    from distillir.readers.prompts import PromptTemplate
    from distillir.readers.rag_lm import shared_prefix_length

    preamble = "Context: the tower was completed in 1889 in paris.\nQuestion: when was the tower completed?\nAnswer: 1889\n\n"
    reader = CausalLMReader.from_pretrained(tiny_lm_dir, passage_max_tokens=24,
                                            prompts=PromptTemplate(read=preamble + "Context: {passage}\nQuestion: {question}",
                                                                   chat=False))
    reader.model.generation_config.eos_token_id = None
    prompts = [reader._prompt_ids(reader.read_prompt(q, p["title"], p["text"])) for q, p in ((Q, A), (Q, B), ("why", A))]
    assert shared_prefix_length(prompts) >= 16 and shared_prefix_length(prompts[:1]) == 0
    mixtures = [([0, 1], torch.log_softmax(torch.tensor([1.0, 0.0]), 0)), ([2], torch.zeros(1)), ([1], torch.zeros(1))]
    shared = generate_mixtures(reader, prompts, mixtures, 5)
    assert shared == generate_mixtures(reader, prompts, mixtures, 5, share_prefix=False)
    assert shared[1] == reader.generate([reader.read_prompt("why", A["title"], A["text"])], max_new_tokens=5)[0]
