"""A causal LM that reads each passage alone and marginalises over passages (RAG, Lewis et al., 2020; Re2G,
Glass et al., 2022, weighs the passages with its re-ranker's softmax).

The seq2seq version is `distillir.readers.rag`. Here every (question, passage) pair is one prompt of a decoder-only
LM (`CausalLMReader.read_prompt`), and the answer's tokens are the same after every prompt, so the per-token
log-probabilities line up across a question's passages and both styles apply:

    token style (RAG-token):     log p(y) = sum_t log sum_k w_k p(y_t | prompt_k, y_<t)
    sequence style (RAG-seq.):   log p(y) = log sum_k w_k prod_t p(y_t | prompt_k, y_<t)

`marginal_log_likelihood` keeps the gradient (to the weights, so to the re-ranker, and to whatever LM layers are
trainable: `train_last_layers`); `marginal_generate` decodes RAG-token greedily with one KV cache per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distillir.errors import ConfigError
from distillir.readers.causal_lm import CausalLMReader
from distillir.readers.rag import mix_passages, renormalise

STYLES = ("token", "sequence")


def train_last_layers(reader: CausalLMReader, n: int) -> int:
    """Freezes the LM except its last `n` decoder layers and final norm (0: all frozen); the number of trainable
    parameters. The embeddings (tied to the output head in small LMs) stay frozen, so autograd records nothing
    before the first trainable layer: a step costs about one forward plus the backward of `n` layers."""
    model = reader.model
    model.requires_grad_(False)
    if n <= 0:
        return 0
    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise ConfigError(f"{reader.name}: no decoder `layers` to train (train_layers needs a Llama-like LM)")
    if n > len(layers):
        raise ConfigError(f"train_layers is {n}, but {reader.name} has {len(layers)} layers")
    for layer in layers[len(layers) - n:]:
        layer.requires_grad_(True)
    norm = getattr(model.base_model, "norm", None)
    if norm is not None:
        norm.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def prompt_grid(reader: CausalLMReader, questions: Sequence[str], passages: Sequence[Sequence[dict]],
                n: int) -> tuple[list[list[int]], torch.Tensor]:
    """Token ids of the B x n prompts (question-major; a question with fewer than n passages repeats its last
    one) and the (B, n) mask of the real ones."""
    ids, present = [], torch.zeros(len(questions), n, dtype=torch.bool)
    for i, (question, ctxs) in enumerate(zip(questions, passages)):
        if not ctxs:
            raise ConfigError(f"question {question!r} has no passage to read")
        for k in range(n):
            c = ctxs[min(k, len(ctxs) - 1)]
            ids.append(reader._prompt_ids(reader.read_prompt(question, c.get("title", ""), c.get("text", ""))))
        present[i, : min(n, len(ctxs))] = True
    return ids, present


def target_ids(reader: CausalLMReader, answer: str) -> list[int]:
    ids = reader.tokenizer(reader.target_text(answer), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"answer {answer!r} is empty after tokenisation: nothing to score")
    return ids


def token_log_probs(reader: CausalLMReader, prompts: Sequence[list[int]], targets: Sequence[list[int]]):
    """(N, T) log p(target_t | prompt, target_<t) for each (prompt, target) row, zero past a target's end, and
    the (N, T) mask of real target tokens. Gradients flow to whatever parameters are trainable."""
    pad = reader.tokenizer.pad_token_id
    seqs = [p + t for p, t in zip(prompts, targets)]
    width, length = max(len(s) for s in seqs), max(len(t) for t in targets)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    wanted = torch.zeros((len(seqs), length), dtype=torch.long)
    valid = torch.zeros((len(seqs), length), dtype=torch.bool)
    positions = torch.zeros((len(seqs), length), dtype=torch.long)
    for r, (p, t) in enumerate(zip(prompts, targets)):
        ids[r, : len(p) + len(t)] = torch.tensor(p + t)
        mask[r, : len(p) + len(t)] = 1
        wanted[r, : len(t)], valid[r, : len(t)] = torch.tensor(t), True
        positions[r, : len(t)] = torch.arange(len(p) - 1, len(p) - 1 + len(t))  # the state that predicts t_j
    device = reader.device
    hidden = reader.model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    rows = torch.arange(len(seqs), device=device)[:, None]
    log_probs = torch.log_softmax(reader._target_logits(hidden[rows, positions.to(device)]), dim=-1)
    token = log_probs.gather(-1, wanted.to(device)[..., None]).squeeze(-1)
    valid = valid.to(device)
    return token.masked_fill(~valid, 0.0), valid


def marginal_log_likelihood(reader: CausalLMReader, questions: Sequence[str], passages: Sequence[Sequence[dict]],
                            answers: Sequence[str], log_weights: torch.Tensor, style: str = "token"):
    """((B,) log p(answer) marginalised over each question's passages, (B,) answer tokens)."""
    if style not in STYLES:
        raise ConfigError(f"style must be one of {STYLES}, got {style!r}")
    n = log_weights.shape[1]
    prompts, present = prompt_grid(reader, questions, passages, n)
    answer_ids = [target_ids(reader, a) for a in answers]
    token, valid = token_log_probs(reader, prompts, [a for a in answer_ids for _ in range(n)])
    token, valid = token.view(len(answers), n, -1), valid.view(len(answers), n, -1)[:, 0]
    return mix_passages(token, valid, renormalise(log_weights, present), style), valid.sum(dim=-1)


MIN_SHARED_PREFIX = 16  # tokens: below this, encoding a preamble apart saves less than it costs


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every prompt shares, leaving each at least one of its own (0 below
    MIN_SHARED_PREFIX or for a single prompt)."""
    if len(prompts) < 2:
        return 0
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        n = next((i for i in range(n) if p[i] != first[i]), n)
    return n if n >= MIN_SHARED_PREFIX else 0


@torch.no_grad()
def generate_mixtures(reader: CausalLMReader, prompts: Sequence[list[int]],
                      mixtures: Sequence[tuple[Sequence[int], torch.Tensor]], max_new_tokens: int = 16,
                      share_prefix: bool = True) -> list[str]:
    """Greedy RAG-token decoding of several mixtures over shared prompts: mixture m reads the prompts at its
    indices with its log-weights (renormalised), and each next token maximises log sum_k w_k p(token | prompt_k,
    prefix). Each prompt is encoded once, however many mixtures read it (its KV cache rows are copied), and with
    `share_prefix` so is the preamble all prompts start with; an answer ends at the LM's end token or a line
    break."""
    pad, eos = reader.tokenizer.pad_token_id, reader.model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list) else [eos if eos is not None else reader.tokenizer.eos_token_id])
    device = reader.device
    base = reader.model.base_model  # the head runs on the last state only
    shared = shared_prefix_length(prompts) if share_prefix else 0
    cache = None
    if shared:  # a prompt preamble every prompt starts with (few-shot examples): encoded once, its cache copied
        cache = base(input_ids=torch.tensor([prompts[0][:shared]], device=device), use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(prompts))
    width = max(len(p) for p in prompts) - shared
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), shared + width), dtype=torch.long)
    mask[:, :shared] = 1
    for r, p in enumerate(prompts):  # left padding (after the shared part): each next token at the same column
        ids[r, width - len(p) + shared:], mask[r, shared + width - len(p) + shared:] = torch.tensor(p[shared:]), 1
    rows = torch.tensor([i for index, _ in mixtures for i in index])
    owner = torch.tensor([m for m, (index, _) in enumerate(mixtures) for _ in index])
    weights = torch.cat([w.float() - torch.logsumexp(w.float(), dim=0) for _, w in mixtures]).to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
    out = base(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
               past_key_values=cache, use_cache=True)
    cache = out.past_key_values
    cache.batch_select_indices(rows.to(device))  # one row per (mixture, prompt) read
    mask, positions = mask[rows].to(device), positions[rows, -1:].to(device)
    last = out.last_hidden_state[rows.to(device), -1]
    generated, finished = [[] for _ in mixtures], [False] * len(mixtures)
    bounds = torch.tensor([0] + [len(index) for index, _ in mixtures]).cumsum(0).tolist()
    for _ in range(max_new_tokens):
        scored = weights[:, None] + torch.log_softmax(reader._target_logits(last), dim=-1)
        tokens = [int(torch.logsumexp(scored[bounds[m]:bounds[m + 1]], dim=0).argmax()) for m in range(len(mixtures))]
        for m, t in enumerate(tokens):
            if finished[m]:
                continue
            if t in stops or "\n" in reader.tokenizer.decode([t]):
                finished[m] = True
            else:
                generated[m].append(t)
        if all(finished):
            break
        step = torch.tensor(tokens)[owner][:, None].to(device)
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        positions = positions + 1
        out = base(input_ids=step, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        cache, last = out.past_key_values, out.last_hidden_state[:, -1]
    return [reader.tokenizer.decode(g, skip_special_tokens=True).strip() for g in generated]


def marginal_generate(reader: CausalLMReader, questions: Sequence[str], passages: Sequence[Sequence[dict]],
                      log_weights: torch.Tensor, max_new_tokens: int = 16) -> list[str]:
    """RAG-token greedy answers of B questions, each reading its n passages with (B, n) log-weights."""
    n = log_weights.shape[1]
    prompts, present = prompt_grid(reader, questions, passages, n)
    mixtures = [([i * n + k for k in range(n) if present[i, k]], log_weights[i][present[i]])
                for i in range(len(questions))]
    return generate_mixtures(reader, prompts, mixtures, max_new_tokens)


def predict_systems(reader: CausalLMReader, systems: dict[str, Sequence[dict]], *, n_passages: int,
                    batch_size: int = 4, max_new_tokens: int = 16, done=None, progress: bool = True):
    """{system: {qid: answer}} for several systems' reader examples (the ctxs layout) of the same questions,
    each passage weighted by the softmax of its ctx's "score" over the question's first `n_passages` (equal
    weights where no ctx has one). A question's prompts are encoded once for all systems that read them.
    `done(system, qid, answer)` is called as each answer comes (an append-only log makes a run resumable)."""
    from tqdm.auto import tqdm

    by_question: dict[str, dict[str, dict]] = {}
    for name, examples in systems.items():
        for ex in examples:
            if ex.get("ctxs"):
                by_question.setdefault(str(ex["id"]), {})[name] = ex
    predictions: dict[str, dict[str, str]] = {name: {} for name in systems}
    qids = list(by_question)
    bar = tqdm(total=len(qids), desc="generating", unit="q", disable=not progress)
    for start in range(0, len(qids), batch_size):
        prompts, index_of, mixtures, keys = [], {}, [], []
        for qid in qids[start:start + batch_size]:
            for name, ex in by_question[qid].items():
                ctxs = ex["ctxs"][:n_passages]
                rows = []
                for c in ctxs:
                    prompt = reader.read_prompt(ex["question"], c.get("title", ""), c.get("text", ""))
                    if prompt not in index_of:
                        index_of[prompt] = len(prompts)
                        prompts.append(reader._prompt_ids(prompt))
                    rows.append(index_of[prompt])
                mixtures.append((rows, torch.log_softmax(torch.tensor([float(c.get("score", 0.0)) for c in ctxs]), 0)))
                keys.append((name, qid))
        for (name, qid), answer in zip(keys, generate_mixtures(reader, prompts, mixtures, max_new_tokens)):
            predictions[name][qid] = answer
            if done is not None:
                done(name, qid, answer)
        bar.update(min(batch_size, len(qids) - start))
    bar.close()
    return predictions


def predict_marginal(reader: CausalLMReader, examples: Sequence[dict], *, n_passages: int, batch_size: int = 4,
                     max_new_tokens: int = 16, progress: bool = True) -> dict[str, str]:
    """{qid: answer} for one system's reader examples (see `predict_systems`)."""
    return predict_systems(reader, {"": examples}, n_passages=n_passages, batch_size=batch_size,
                           max_new_tokens=max_new_tokens, progress=progress)[""]


__all__ = ["STYLES", "generate_mixtures", "marginal_generate", "marginal_log_likelihood", "predict_marginal",
           "predict_systems", "prompt_grid", "token_log_probs", "train_last_layers"]
