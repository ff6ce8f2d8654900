"""Cross-attention aggregations (FiD-KD, Atlas ADist) on hand-built tensors, and attention capture helpers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from distillir.errors import ConfigError
from distillir.readers.attention import (
    AttentionUnavailableError,
    cross_attentions_from_outputs,
    find_cross_attention_modules,
    logits_from_probabilities,
)
from distillir.teachers.attention import Aggregation, aggregate_cross_attention, resolve_aggregation


@pytest.fixture()
def attention():
    """(layers=2, B=1, heads=2, out_tokens=2, n*L=2*3): value = 24*layer + 12*head + 6*token + key."""
    return torch.arange(48, dtype=torch.float32).view(2, 1, 2, 2, 6)


@pytest.fixture()
def passage_mask():
    """Passage 0 has 3 real tokens; passage 1 has 2 real tokens and one padding token (key 5)."""
    return torch.tensor([[[True, True, True], [True, True, False]]])


def test_fid_is_mean_of_first_token_over_heads_layers_and_passage_tokens(attention, passage_mask):
    scores = aggregate_cross_attention(attention, passage_mask, "fid")
    # First token, mean over (layer, head) of 24l + 12h + k is 18 + k.
    # Passage 0: keys 0..2 -> 19. Passage 1: keys 3, 4 (5 is padding) -> 21.5.
    assert scores.tolist() == [[19.0, 21.5]]
    # The official normalisation: sum over heads, layers and tokens / (tokens x layers x heads).
    total = sum(24 * layer + 12 * head + key for layer in range(2) for head in range(2) for key in range(3))
    assert scores[0, 0].item() == pytest.approx(total / (3 * 2 * 2))


def test_padding_is_excluded_even_when_it_holds_minus_inf(attention, passage_mask):
    attention[..., 5] = -math.inf  # log of a zero probability on the padding token
    scores = aggregate_cross_attention(attention, passage_mask, "fid")
    assert scores.tolist() == [[19.0, 21.5]]


def test_post_softmax_reduces_like_fid(attention, passage_mask):
    # The source (pre- or post-softmax) only decides what is recorded; the reduction is the same.
    assert torch.equal(
        aggregate_cross_attention(attention, passage_mask, "post_softmax"),
        aggregate_cross_attention(attention, passage_mask, "fid"),
    )


def test_all_tokens_averages_over_non_padding_answer_tokens(attention, passage_mask):
    # Token 1 adds 6: the mean over both tokens adds 3.
    assert aggregate_cross_attention(attention, passage_mask, "all_tokens").tolist() == [[22.0, 24.5]]
    target = torch.tensor([[True, True]])
    assert aggregate_cross_attention(attention, passage_mask, "all_tokens", target).tolist() == [[22.0, 24.5]]
    only_first = torch.tensor([[True, False]])
    assert aggregate_cross_attention(attention, passage_mask, "all_tokens", only_first).tolist() == [[19.0, 21.5]]


def test_max_over_passage_tokens_skips_padding(attention, passage_mask):
    # Per key 18 + k: passage 0 max is key 2 (20); passage 1 max is key 4 (22), not the padding key 5 (23).
    assert aggregate_cross_attention(attention, passage_mask, "max").tolist() == [[20.0, 22.0]]


def test_layer_choice(attention, passage_mask):
    # Last layer only: mean over heads of 24 + 12h + k = 30 + k.
    assert aggregate_cross_attention(attention, passage_mask, resolve_aggregation("fid", [-1])).tolist() == [
        [31.0, 33.5]
    ]
    assert aggregate_cross_attention(attention, passage_mask, resolve_aggregation("fid", [0])).tolist() == [[7.0, 9.5]]
    assert resolve_aggregation("fid", [-1]).label == "fid@layers=-1"
    with pytest.raises(ConfigError, match="out of range"):
        aggregate_cross_attention(attention, passage_mask, resolve_aggregation("fid", [2]))


def test_adist_sums_over_passage_tokens_and_averages_the_rest(attention, passage_mask):
    # Mean over layers, heads and both tokens: 21 + k. Sum over the passage's tokens.
    assert aggregate_cross_attention(attention, passage_mask, "adist").tolist() == [[66.0, 49.0]]


def test_passage_without_tokens_scores_minus_inf(attention):
    mask = torch.tensor([[[True, True, True], [False, False, False]]])
    for name in ("fid", "max", "adist"):
        scores = aggregate_cross_attention(attention, mask, name)
        assert scores[0, 1].item() == -math.inf and math.isfinite(scores[0, 0].item())


def test_batches_are_independent():
    attention = torch.zeros(1, 2, 1, 1, 4)
    attention[0, 0, 0, 0] = torch.tensor([1.0, 3.0, 5.0, 7.0])
    attention[0, 1, 0, 0] = torch.tensor([2.0, 2.0, 9.0, 0.0])
    mask = torch.tensor([[[True, True], [True, False]], [[True, False], [True, True]]])
    assert aggregate_cross_attention(attention, mask, "fid").tolist() == [[2.0, 5.0], [2.0, 4.5]]


def test_bad_inputs(attention, passage_mask):
    with pytest.raises(ConfigError, match="unknown attention aggregation"):
        resolve_aggregation("nope")
    with pytest.raises(ConfigError):
        Aggregation("x", source="values")
    with pytest.raises(ValueError, match="does not match"):
        aggregate_cross_attention(attention, passage_mask[:, :1], "fid")
    with pytest.raises(ValueError, match="layers, B, heads"):
        aggregate_cross_attention(attention[0], passage_mask, "fid")


def test_logits_from_probabilities_keeps_the_softmax_over_passages(passage_mask):
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 2, 1, 6)
    probs = torch.softmax(logits, dim=-1)  # over all keys, as cross-attention does
    exact = aggregate_cross_attention(logits, passage_mask, "fid")
    recovered = aggregate_cross_attention(logits_from_probabilities(probs), passage_mask, "fid")
    shift = exact - recovered
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5)  # one constant per question
    assert torch.allclose(exact.softmax(-1), recovered.softmax(-1), atol=1e-6)
    assert torch.isfinite(logits_from_probabilities(torch.zeros(3))).all()


def test_empty_cross_attentions_raise_a_clear_error():
    for outputs in (
        SimpleNamespace(cross_attentions=None),
        SimpleNamespace(cross_attentions=()),
        SimpleNamespace(cross_attentions=(None, None)),
    ):
        with pytest.raises(AttentionUnavailableError, match='attn_implementation="eager"'):
            cross_attentions_from_outputs(outputs)
    stacked = cross_attentions_from_outputs(
        SimpleNamespace(cross_attentions=(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4)))
    )
    assert stacked.shape == (2, 1, 2, 1, 4)


def test_cross_attention_modules_are_found_for_t5_and_bart():
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(
        T5Config(d_model=16, num_layers=2, num_decoder_layers=3, num_heads=2, d_ff=32, d_kv=8, vocab_size=50)
    )
    names = [n for n, _ in find_cross_attention_modules(t5)]
    assert names == [f"decoder.block.{i}.layer.1.EncDecAttention" for i in range(3)]
    bart = BartForConditionalGeneration(
        BartConfig(
            vocab_size=50,
            d_model=16,
            encoder_layers=1,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            max_position_embeddings=64,
        )
    )
    assert [n for n, _ in find_cross_attention_modules(bart)] == [
        f"model.decoder.layers.{i}.encoder_attn" for i in range(2)
    ]
