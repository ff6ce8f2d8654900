"""A generator that reads each passage alone and marginalises over passages (Lewis et al., 2020, RAG; used by
Re2G, Glass et al., 2022, with the re-ranker's scores as the passage weights).

Given a question's n passages with log-weights log w_k (a log-softmax of the re-ranker's scores), the answer
y is scored

    token style (RAG-token):     log p(y) = sum_t log sum_k w_k p(y_t | q, p_k, y_<t)
    sequence style (RAG-seq.):   log p(y) = log sum_k w_k prod_t p(y_t | q, p_k, y_<t)

Gradients reach both the generator and, through w, whatever produced the weights: that is how Re2G trains
its re-ranker end to end. The seq2seq model is a `FiDReader`'s (any HF encoder-decoder): its `encode` already
encodes passages separately; here each passage's states are decoded on their own instead of being fused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distillir.errors import ConfigError
from distillir.models.seq2seq import IGNORE_INDEX
from distillir.readers.fid import FiDReader
from distillir.readers.fid_data import FiDBatch, batched

STYLES = ("token", "sequence")


def _per_passage_states(reader: FiDReader, batch: FiDBatch):
    batch_size, n, length = batch.input_ids.shape
    hidden = reader.encode(batch.input_ids, batch.attention_mask)
    hidden = hidden.reshape(batch_size * n, length, hidden.shape[-1])
    mask = batch.attention_mask.reshape(batch_size * n, length).bool()
    return hidden, mask


def check_log_weights(log_weights: torch.Tensor, batch: FiDBatch) -> torch.Tensor:
    """Absent passages get -inf weight, and the rest are renormalised into a log-distribution over each
    question's present passages."""
    if log_weights.shape != batch.input_ids.shape[:2]:
        raise ValueError(f"log_weights {tuple(log_weights.shape)} must be (questions, passages) = "
                         f"{tuple(batch.input_ids.shape[:2])}")
    return renormalise(log_weights, batch.context_present)


def renormalise(log_weights: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
    """(B, n) log-weights with absent passages at -inf, renormalised over each question's present ones."""
    log_weights = log_weights.float()
    if present is not None:
        log_weights = log_weights.masked_fill(~present.to(log_weights.device), float("-inf"))
    return log_weights - torch.logsumexp(log_weights, dim=1, keepdim=True)


def mix_passages(token: torch.Tensor, valid: torch.Tensor, log_weights: torch.Tensor, style: str) -> torch.Tensor:
    """(B,) log p(answer) from per-passage token log-probs (B, n, T; 0 past the answer), the answer's real tokens
    (B, T) and normalised log-weights (B, n), mixed per token or per sequence (the module docstring)."""
    if style == "token":
        return torch.logsumexp(log_weights[:, :, None] + token, dim=1).masked_fill(~valid, 0.0).sum(dim=-1)
    return torch.logsumexp(log_weights + token.sum(dim=-1), dim=1)


def marginal_log_likelihood(reader: FiDReader, batch: FiDBatch, log_weights: torch.Tensor,
                            style: str = "token") -> torch.Tensor:
    """(B,) log p(answer) marginalised over each question's passages (see the module docstring)."""
    if style not in STYLES:
        raise ConfigError(f"style must be one of {STYLES}, got {style!r}")
    if batch.labels is None:
        raise ConfigError("the generator's likelihood needs labels (examples with answers)")
    batch_size, n, _ = batch.input_ids.shape
    log_weights = check_log_weights(log_weights, batch)
    hidden, mask = _per_passage_states(reader, batch)
    labels = batch.labels.repeat_interleave(n, dim=0)
    logits = reader.decode(hidden, mask, reader.decoder_inputs(labels, labels.shape[0], labels.device)).logits
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    token = log_probs.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)  # (B*n, T)
    valid = (batch.labels != IGNORE_INDEX).to(token.device)
    token = token.view(batch_size, n, -1).masked_fill(~valid[:, None, :], 0.0)
    return mix_passages(token, valid, log_weights, style)


@torch.no_grad()
def marginal_generate(reader: FiDReader, batch: FiDBatch, log_weights: torch.Tensor,
                      max_new_tokens: int = 32) -> list[str]:
    """Greedy RAG-token decoding: each next token maximises sum_k w_k p(token | q, p_k, prefix)."""
    batch_size, n, _ = batch.input_ids.shape
    log_weights = check_log_weights(log_weights, batch).float()
    hidden, mask = _per_passage_states(reader, batch)
    generated = reader.decoder_inputs(None, batch_size, hidden.device)  # (B, 1) start tokens
    finished = torch.zeros(batch_size, dtype=torch.bool, device=hidden.device)
    for _ in range(max_new_tokens):
        logits = reader.decode(hidden, mask, generated.repeat_interleave(n, dim=0)).logits[:, -1]
        log_probs = torch.log_softmax(logits.float(), dim=-1).view(batch_size, n, -1)
        mixed = torch.logsumexp(log_weights[:, :, None] + log_probs, dim=1)
        token = mixed.argmax(dim=-1).masked_fill(finished, reader.pad_token_id)
        generated = torch.cat([generated, token[:, None]], dim=1)
        finished |= token == reader.eos_token_id
        if bool(finished.all()):
            break
    texts = reader.tokenizer.batch_decode(generated[:, 1:], skip_special_tokens=True)
    return [text.strip() for text in texts]


def predict_marginal(reader: FiDReader, examples: Sequence[dict], *, batch_size: int = 8, n_passages: int | None = None,
                     max_new_tokens: int = 32) -> dict[str, str]:
    """{qid: answer} for reader examples (the ctxs layout) by RAG-token greedy decoding (`marginal_generate`),
    each passage weighted by the softmax of its ctx's "score" (a re-ranker's, say) over the question's passages."""
    n = n_passages or reader.n_passages
    collate = reader.collator(n, labels=False)
    predictions: dict[str, str] = {}
    was_training = reader.training
    reader.eval()
    try:
        for chunk in batched(list(examples), batch_size):
            weights = []
            for ex in chunk:
                scores = [float(c["score"]) for c in ex["ctxs"][:n]]
                weights.append(torch.log_softmax(torch.tensor(scores + [float("-inf")] * (n - len(scores))), dim=0))
            batch = collate(chunk).to(reader.device)
            answers = marginal_generate(reader, batch, torch.stack(weights).to(reader.device),
                                        max_new_tokens=max_new_tokens)
            predictions.update(zip(batch.qids, answers))
    finally:
        reader.train(was_training)
    return predictions


def top_passages(scores: torch.Tensor, mask: torch.Tensor, n: int):
    """(B, n') indices of the best-scored real candidates (n' = min(n, C)), (B, n') their log-weights
    log softmax(score) over the chosen ones, and whether each chosen one is real (False where a question has
    fewer than n' real candidates: weight -inf). The weights keep the scores' gradient (Re2G trains its
    re-ranker through them)."""
    scores = scores.float().masked_fill(~mask, float("-inf"))
    k = min(n, scores.shape[1])
    top = scores.detach().topk(k, dim=1).indices
    chosen = scores.gather(1, top)
    return top, torch.log_softmax(chosen, dim=1), torch.isfinite(chosen)


__all__ = ["STYLES", "check_log_weights", "marginal_generate", "marginal_log_likelihood", "predict_marginal", "top_passages"]
