"""Teacher scores from a FiD reader's answer likelihood (Izacard et al., 2022, Atlas, section 2.2).

- PDist (`answer_log_likelihood`): each passage is read *alone* by the reader's decoder and scored by
  log p(answer | q, p_k). FiD encodes passages separately, so one encoder pass serves all n
  single-passage reads; only the decoder runs n times (batched in chunks).
- LOOP (`leave_one_out_scores`): how much the reader's loss on the answer rises when passage k is
  removed from its context. Atlas uses the loss without k itself; the increase differs from it by the
  full-context loss, a constant per question, so softmaxes over passages are identical.

Both run without gradient; call them with the reader in eval mode (as `score_with_reader` does) so that
dropout does not add noise to the scores.
"""

from __future__ import annotations

import math

import torch

from distillir.errors import ConfigError
from distillir.models.seq2seq import IGNORE_INDEX, token_log_likelihood
from distillir.readers.fid import FiDReader
from distillir.readers.fid_data import FiDBatch


def _require_labels(batch: FiDBatch, teacher: str) -> torch.Tensor:
    if batch.labels is None:
        raise ConfigError(f"{teacher} scores the answer, so the batch needs labels (examples with answers)")
    return batch.labels


def _mean_nll(reader: FiDReader, hidden, mask, labels) -> torch.Tensor:
    """Mean per-token negative log-likelihood of `labels` for each row, from encoder states and mask."""
    outputs = reader.decode(hidden, mask, reader.decoder_inputs(labels, labels.shape[0], labels.device))
    log_likelihood = token_log_likelihood(outputs.logits, labels).sum(dim=-1)
    return -log_likelihood / (labels != IGNORE_INDEX).sum(dim=-1).clamp(min=1)


@torch.no_grad()
def answer_log_likelihood(
    reader: FiDReader, batch: FiDBatch, *, normalize: str = "mean", chunk_size: int = 16
) -> torch.Tensor:
    """(B, n) log p(answer | q, p_k), each passage read alone; absent passages -inf.

    normalize: "mean" divides by the answer's token count (Atlas' PDist scores this way), "sum" keeps the
    full sequence log-likelihood.
    """
    if normalize not in ("mean", "sum"):
        raise ConfigError(f"normalize must be 'mean' or 'sum', got {normalize!r}")
    labels = _require_labels(batch, "PDist")
    batch_size, n, length = batch.input_ids.shape
    hidden = reader.encode(batch.input_ids, batch.attention_mask)
    hidden = hidden.reshape(batch_size * n, length, hidden.shape[-1])
    mask = batch.attention_mask.reshape(batch_size * n, length).bool()
    repeated_labels = labels.repeat_interleave(n, dim=0)
    scores = torch.full((batch_size * n,), -math.inf, device=hidden.device)
    present = batch.context_present.reshape(-1).nonzero().squeeze(1)
    for rows in present.split(chunk_size):
        nll = _mean_nll(reader, hidden[rows], mask[rows], repeated_labels[rows])
        if normalize == "sum":
            nll = nll * (repeated_labels[rows] != IGNORE_INDEX).sum(dim=-1)
        scores[rows] = -nll
    return scores.view(batch_size, n)


@torch.no_grad()
def leave_one_out_scores(reader: FiDReader, batch: FiDBatch, *, chunk_size: int = 8) -> torch.Tensor:
    """(B, n) rise in the reader's mean token loss when passage k is left out; absent passages -inf.

    A question with a single passage gets 0 for it (there is nothing to compare it with).
    """
    labels = _require_labels(batch, "LOOP")
    batch_size, n, length = batch.input_ids.shape
    hidden = reader.encode(batch.input_ids, batch.attention_mask)
    passage_mask = reader.passage_mask(batch.attention_mask, batch.context_present)
    full_loss = _mean_nll(reader, hidden, passage_mask.reshape(batch_size, n * length), labels)

    scores = torch.full((batch_size, n), -math.inf, device=hidden.device)
    pairs = batch.context_present.nonzero()  # (question, passage) of every real passage
    for chunk in pairs.split(chunk_size):
        rows, left_out = chunk[:, 0], chunk[:, 1]
        mask = passage_mask[rows].clone()
        mask[torch.arange(len(rows), device=mask.device), left_out] = False
        alone = ~mask.flatten(1).any(dim=1)
        mask[alone] = passage_mask[rows][alone]  # nothing would be left: score 0 below instead of NaN
        loss = _mean_nll(reader, hidden[rows], mask.reshape(len(rows), n * length), labels[rows])
        scores[rows, left_out] = torch.where(alone, torch.zeros_like(loss), loss - full_loss[rows])
    return scores
