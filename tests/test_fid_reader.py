"""The Fusion-in-Decoder reader: collation, forward with teacher scores (T5, BERT encoder-decoder, BART),
attention capture modes, generation, prediction with EM/F1, and save/load."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from distillir.errors import ConfigError, InputError
from distillir.readers import FiDCollator, FiDReader, examples_from_run, load_fid_examples
from distillir.readers.attention import AttentionUnavailableError
from distillir.teachers.attention import output_scores, resolve_aggregation

TINY_T5 = {"d_model": 32, "num_layers": 2, "num_heads": 2, "d_ff": 64, "d_kv": 16, "dropout_rate": 0.0}

EXAMPLES = [
    {
        "id": "q1",
        "question": "What is the capital of France?",
        "answers": ["Paris"],
        "ctxs": [
            {"id": "p1", "title": "Paris", "text": "Paris is the capital and largest city of France."},
            {"id": "p3", "title": "Berlin", "text": "Berlin is the capital of Germany."},
        ],
    },
    {
        "id": "q2",
        "question": "When was the Eiffel Tower completed?",
        "answers": ["1889", "in 1889"],
        "ctxs": [
            {"id": "p2", "title": "Eiffel Tower", "text": "The Eiffel Tower was completed in 1889."},
            {"id": "p5", "title": "Mitochondrion", "text": "The mitochondria is the powerhouse of the cell."},
            {"id": "p4", "title": "Photosynthesis", "text": "Plants convert light into chemical energy."},
        ],
    },
]


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def t5_reader(tokenizer):
    torch.manual_seed(0)
    return FiDReader.from_config(tokenizer, **TINY_T5, settings={"n_passages": 3, "passage_max_length": 32})


@pytest.fixture(scope="module")
def bert_reader(tiny_bert_dir):
    torch.manual_seed(0)
    return FiDReader.from_encoder(tiny_bert_dir, n_passages=3, passage_max_length=32)


# ---- collator -----------------------------------------------------------------------------------


def test_collator_shapes_padding_and_labels(tokenizer):
    collate = FiDCollator(tokenizer, n_passages=3, passage_max_length=16, answer_max_length=8)
    batch = collate(EXAMPLES)
    assert batch.input_ids.shape[:2] == (2, 3) and batch.input_ids.shape == batch.attention_mask.shape
    assert batch.input_ids.shape[2] == 16  # the longest passages were truncated
    assert batch.context_present.tolist() == [[True, True, False], [True, True, True]]
    assert batch.qids == ["q1", "q2"] and batch.pids == [["p1", "p3"], ["p2", "p5", "p4"]]
    # Passage text layout, as FiD formats it.
    first = tokenizer.decode(FiDCollator(tokenizer, 3)(EXAMPLES).input_ids[0, 0], skip_special_tokens=True)
    assert first.startswith("question : what is the capital of france? title : paris context : paris is")
    # Padding tokens are masked out.
    lengths = batch.attention_mask.sum(-1)
    assert (
        batch.input_ids[batch.attention_mask == 0] == tokenizer.pad_token_id
    ).all() and lengths.min() < lengths.max()
    # Labels: the first answer, then EOS ([SEP] for a BERT tokenizer), padded with -100.
    sep = tokenizer.sep_token_id
    assert batch.labels[0].tolist()[:2] == [tokenizer.convert_tokens_to_ids("paris"), sep]
    assert batch.labels[0, 2:].eq(-100).all() or batch.labels.shape[1] == 2
    assert all(row[row != -100][-1].item() == sep for row in batch.labels)


def test_collator_truncates_answers_and_picks_random_answers_reproducibly(tokenizer):
    long = [{**EXAMPLES[0], "answers": ["one two three four five six seven eight nine ten"]}]
    labels = FiDCollator(tokenizer, 2, answer_max_length=4)(long).labels
    assert labels.shape == (1, 4) and labels[0, -1].item() == tokenizer.sep_token_id
    many = [{**EXAMPLES[1], "answers": [f"answer {i}" for i in range(10)]}] * 6

    def draws(seed):
        collate = FiDCollator(tokenizer, 2, answer_choice="random", seed=seed)
        return [collate(many).labels.tolist() for _ in range(3)]

    assert draws(1) == draws(1)
    assert len({str(x) for x in draws(1)[0]}) > 1  # different answers were drawn


def test_collator_answer_policy_and_bad_examples(tokenizer):
    no_answers = [{**e, "answers": None} for e in EXAMPLES]
    assert FiDCollator(tokenizer, 2)(no_answers).labels is None
    assert FiDCollator(tokenizer, 2, labels=False)(EXAMPLES).labels is None
    with pytest.raises(InputError, match="'q1' has no answers"):
        FiDCollator(tokenizer, 2)([no_answers[0], EXAMPLES[1]])
    with pytest.raises(InputError, match="has no answers"):
        FiDCollator(tokenizer, 2, labels=True)(no_answers)
    with pytest.raises(InputError, match="no ctxs"):
        FiDCollator(tokenizer, 2)([{**EXAMPLES[0], "ctxs": []}])
    with pytest.raises(InputError, match="question"):
        FiDCollator(tokenizer, 2)([{"id": "x", "ctxs": EXAMPLES[0]["ctxs"]}])
    with pytest.raises(ConfigError):
        FiDCollator(tokenizer, 0)


def test_examples_from_run_and_jsonl(tmp_path, tiny_corpus, tiny_queries):
    from distillir.data.run import Run

    run = Run({"q1": [("p1", 2.0), ("p3", 1.0), ("p2", 0.5)], "q2": [("p2", 1.0)]})
    examples = examples_from_run(run, tiny_queries, tiny_corpus, n_passages=2)
    assert [c["id"] for c in examples[0]["ctxs"]] == ["p1", "p3"] and examples[0]["answers"] == ["Paris"]
    path = tmp_path / "ctxs.jsonl"
    run.write_jsonl(path, tiny_queries, tiny_corpus)
    loaded = load_fid_examples(path)
    assert loaded[0]["id"] == "q1" and len(loaded[0]["ctxs"]) == 3
    (tmp_path / "bad.jsonl").write_text('{"id": "q", "question": "x", "ctxs": "oops"}\n')
    with pytest.raises(InputError, match="line 1.*ctxs"):
        load_fid_examples(tmp_path / "bad.jsonl")


# ---- forward and teacher scores ------------------------------------------------------------------


def scored(reader, batch, name, with_labels=True):
    """One forward capturing what aggregation `name` needs: (the reader output, its (B, n) scores)."""
    agg = resolve_aggregation(name)
    labels = batch.labels if with_labels else None
    out = reader(batch.input_ids, batch.attention_mask, labels, batch.context_present, attention=agg.capture)
    return out, output_scores(out, labels, agg)


@pytest.mark.parametrize("which", ["t5_reader", "bert_reader"])
def test_forward_returns_loss_and_scores_per_passage(which, request):
    reader = request.getfixturevalue(which)
    batch = reader.collator()(EXAMPLES)
    reader.train()
    out, scores = scored(reader, batch, "fid")
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert scores.shape == (2, 3) and not scores.requires_grad
    assert torch.isfinite(scores[batch.context_present]).all()
    assert scores[0, 2].item() == float("-inf")  # q1 has only two passages
    out.loss.backward()  # the same pass trains the reader
    assert any(p.grad is not None for p in reader.parameters())
    reader.zero_grad()
    for name in ("post_softmax", "all_tokens", "max", "adist"):
        _, scores = scored(reader, batch, name)
        assert scores.shape == (2, 3) and torch.isfinite(scores[batch.context_present]).all()
    reader.eval()


def test_bart_reader(tokenizer):
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        decoder_start_token_id=tokenizer.sep_token_id,
    )
    reader = FiDReader(BartForConditionalGeneration(config), tokenizer, n_passages=3, passage_max_length=32)
    out, scores = scored(reader, reader.collator()(EXAMPLES), "fid")
    assert scores.shape == (2, 3) and torch.isfinite(out.loss)


def test_recording_does_not_change_the_loss_and_needs_no_labels_for_first_token(t5_reader):
    batch = t5_reader.collator()(EXAMPLES)
    plain = t5_reader(**batch.model_inputs())
    recorded, recorded_scores = scored(t5_reader, batch, "fid")
    assert torch.allclose(plain.loss, recorded.loss, atol=1e-6)
    # The first decoder position only sees the start token: labels do not change its attention.
    no_labels, no_label_scores = scored(t5_reader, batch, "fid", with_labels=False)
    assert no_labels.loss is None
    assert torch.allclose(no_label_scores, recorded_scores, atol=1e-5)
    with pytest.raises(ConfigError, match="needs labels"):
        scored(t5_reader, batch, "all_tokens", with_labels=False)


def test_eager_capture_matches_exact_logits_up_to_a_per_question_shift(t5_reader):
    model = copy.deepcopy(t5_reader.model)
    model.set_attn_implementation("eager")
    eager = FiDReader(model, t5_reader.tokenizer, capture="eager", n_passages=3)
    batch = t5_reader.collator()(EXAMPLES)
    present = batch.context_present
    _, post_exact = scored(t5_reader, batch, "post_softmax")
    _, post_eager = scored(eager, batch, "post_softmax")
    assert torch.allclose(post_exact[present], post_eager[present], atol=1e-6)
    _, exact = scored(t5_reader, batch, "fid")
    _, recovered = scored(eager, batch, "fid")
    shift = (exact - recovered).masked_fill(~present, 0.0)
    for row in range(2):
        values = shift[row, present[row]]
        assert torch.allclose(values, values[0].expand_as(values), atol=1e-4)
    with pytest.raises(AttentionUnavailableError, match="value vectors"):
        scored(eager, batch, "adist")


def test_sdpa_model_with_eager_capture_fails_loudly(t5_reader):
    model = copy.deepcopy(t5_reader.model)
    model.set_attn_implementation("sdpa")
    reader = FiDReader(model, t5_reader.tokenizer, capture="eager", n_passages=3)
    batch = reader.collator()(EXAMPLES)
    with pytest.raises(AttentionUnavailableError, match='attn_implementation="eager"'):
        scored(reader, batch, "fid")
    # Without teacher scores the reader works as usual.
    assert torch.isfinite(reader(**batch.model_inputs()).loss)


def test_not_a_seq2seq_model_is_refused(tokenizer):
    from transformers import BertConfig, BertModel

    with pytest.raises(ConfigError, match="encoder-decoder"):
        FiDReader(
            BertModel(
                BertConfig(
                    vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
                )
            ),
            tokenizer,
        )


# ---- generation, prediction, persistence ---------------------------------------------------------


@pytest.mark.parametrize("which", ["t5_reader", "bert_reader"])
def test_generate_returns_strings(which, request):
    reader = request.getfixturevalue(which)
    batch = reader.collator(labels=False)(EXAMPLES)
    for beams in (1, 2):
        answers = reader.generate(
            batch.input_ids, batch.attention_mask, batch.context_present, max_new_tokens=3, num_beams=beams
        )
        assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_predict_after_overfitting_gets_full_em_and_f1(tokenizer, tiny_queries):
    from distillir.evaluation.qa import evaluate_answers

    torch.manual_seed(0)
    reader = FiDReader.from_config(tokenizer, **TINY_T5, settings={"n_passages": 2, "passage_max_length": 16})
    examples = [{**EXAMPLES[0], "ctxs": EXAMPLES[0]["ctxs"][:1]}, {**EXAMPLES[1], "ctxs": EXAMPLES[1]["ctxs"][:1]}]
    batch = reader.collator()(examples)
    optimizer = torch.optim.Adam(reader.parameters(), lr=5e-2)
    reader.train()
    for _ in range(20):
        loss = reader(**batch.model_inputs()).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    predictions = reader.predict(examples, batch_size=1, max_new_tokens=4)
    assert predictions == {"q1": "paris", "q2": "1889"}
    assert reader.training  # predict restores the mode
    result = evaluate_answers(predictions, tiny_queries.subset(["q1", "q2"]))
    assert result["EM"] == 1.0 and result["F1"] == 1.0


def test_save_and_load_round_trip(bert_reader, tmp_path):
    target = tmp_path / "reader"
    bert_reader.save_pretrained(target)
    assert (target / "fid_reader.json").is_file() and (target / "config.json").is_file()
    assert not [p for p in os.listdir(tmp_path) if p != "reader"]  # no temporary leftovers
    loaded = FiDReader.from_pretrained(target)
    assert type(loaded.model).__name__ == "EncoderDecoderModel" and loaded.settings() == bert_reader.settings()
    batch = bert_reader.collator()(EXAMPLES)
    bert_reader.eval()
    loaded.eval()
    a, a_scores = scored(bert_reader, batch, "fid")
    b, b_scores = scored(loaded, batch, "fid")
    assert torch.allclose(a.loss, b.loss) and torch.equal(a_scores, b_scores)
    bert_reader.save_pretrained(target)  # overwriting an existing directory is fine
    assert FiDReader.from_pretrained(target, n_passages=5).n_passages == 5


def test_a_cross_attention_layer_that_records_nothing_fails_loudly(t5_reader):
    from distillir.readers.attention import find_cross_attention_modules, install_recorder

    model = copy.deepcopy(t5_reader.model)
    reader = FiDReader(model, t5_reader.tokenizer, n_passages=3)
    del find_cross_attention_modules(model)[1][1]._distillir_recorder  # as if layer 1 bypassed the interface
    with pytest.raises(AttentionUnavailableError, match=r"decoder layers \[1\]"):
        scored(reader, reader.collator()(EXAMPLES), "fid")
    with pytest.raises(AttentionUnavailableError, match="no decoder cross-attention"):
        install_recorder(model.get_encoder())
