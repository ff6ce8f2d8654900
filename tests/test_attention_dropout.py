"""`trainer.attention_dropout`: the attention-probability dropout set on every attention module, nothing else."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distillir.errors import ConfigError
from distillir.training.arguments import TrainConfig, TrainingArguments
from distillir.training.dropout import set_attention_dropout
from distillir.training.trainer import Trainer


def tiny_bert(attention: float = 0.1, hidden: float = 0.1):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=32,
                                attention_probs_dropout_prob=attention, hidden_dropout_prob=hidden))


def tiny_llama():
    from transformers import LlamaConfig, LlamaModel

    return LlamaModel(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                  num_attention_heads=2, num_key_value_heads=2, attention_dropout=0.2))


def test_bert_attention_dropout_only():
    model = tiny_bert()
    assert set_attention_dropout(model, 0.0) == 2  # one self-attention per layer
    for layer in model.encoder.layer:
        assert layer.attention.self.dropout.p == 0.0
        assert layer.attention.output.dropout.p == 0.1  # the hidden-state dropout after attention is kept
        assert layer.output.dropout.p == 0.1
    assert model.embeddings.dropout.p == 0.1


def test_float_attention_dropout_of_a_causal_lm():
    model = tiny_llama()
    assert set_attention_dropout(model, 0.05) == 3
    assert [layer.self_attn.attention_dropout for layer in model.layers] == [0.05] * 3


def test_a_model_without_attention_changes_nothing():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.3))
    assert set_attention_dropout(model, 0.0) == 0
    assert model[1].p == 0.3


def test_out_of_range_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        set_attention_dropout(tiny_bert(), 1.0)
    with pytest.raises(ConfigError, match="attention_dropout"):
        TrainConfig(attention_dropout=-0.1)


def test_off_makes_a_training_forward_deterministic(tmp_path):
    """With hidden dropout 0, a train-mode forward is random only through attention dropout: two forwards
    differ at 0.5 and agree once the trainer sets it to 0."""
    ids = torch.tensor([[1, 5, 7, 9, 2, 3]])

    def twice(model):
        model.train()
        return model(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state

    a, b = twice(tiny_bert(attention=0.5, hidden=0.0))
    assert not torch.allclose(a, b)
    model = tiny_bert(attention=0.5, hidden=0.0)
    Trainer(model, TrainingArguments(output_dir=tmp_path, attention_dropout=0.0), [ids], torch.cat,
            loss_fn=lambda m, x: m(input_ids=x).last_hidden_state.sum())
    a, b = twice(model)
    assert torch.equal(a, b)


def test_null_keeps_the_models_own(tmp_path):
    model = tiny_bert(attention=0.3)
    Trainer(model, TrainingArguments(output_dir=tmp_path), [], torch.cat, loss_fn=lambda m, x: x.sum())
    assert model.encoder.layer[0].attention.self.dropout.p == 0.3
