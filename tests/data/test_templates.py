"""Chat templates: exact rendering, labels only on answers + end token, visual spans, truncation, errors."""

from __future__ import annotations

import string

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers
from transformers import PreTrainedTokenizerFast

from vregion.data import (IGNORE_INDEX, SampleError, get_template, tokenize_conversation, tokenize_prompt,
                          validate_template)

N = 3  # visual tokens per image

CONV = [
    {"from": "human", "value": "<image>\nWhat colour?"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "Sure?"},
    {"from": "gpt", "value": "yes"},
]

# The real formats, with <image> standing for its N visual tokens.
GOLDEN = {
    "vicuna-v1": (
        "<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat colour? "
        "ASSISTANT: red</s>USER: Sure? ASSISTANT: yes</s>"
    ),
    "llama-3": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat colour?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nred<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nSure?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nyes<|eot_id|>"
    ),
    "chatml": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat colour?"
        "<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n<|im_start|>user\nSure?<|im_end|>\n"
        "<|im_start|>assistant\nyes<|im_end|>\n"
    ),
    "gemma": (
        "<bos><start_of_turn>user\n<image>\nWhat colour?<end_of_turn>\n<start_of_turn>model\nred<end_of_turn>\n"
        "<start_of_turn>user\nSure?<end_of_turn>\n<start_of_turn>model\nyes<end_of_turn>\n"
    ),
}
END = {"vicuna-v1": "</s>", "llama-3": "<|eot_id|>", "chatml": "<|im_end|>", "gemma": "<end_of_turn>"}


def supervised_runs(sample, tok) -> list[str]:
    """Decoded text of each contiguous run of supervised labels."""
    runs, current = [], []
    for label in sample.labels + [IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_rendering_matches_real_template(tok, image_token_id, name):
    sample = tokenize_conversation(CONV, tok, name, N, 1000, image_token_id, num_images=1)
    start = sample.image_starts[0]
    text_ids = sample.input_ids[:start] + sample.input_ids[start + N :]
    before, after = GOLDEN[name].split("<image>")
    assert tok.decode(text_ids) == before + after
    assert tok.decode(sample.input_ids[:start]) == before


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_labels_only_on_answers_and_end_token(tok, image_token_id, name):
    sample = tokenize_conversation(CONV, tok, name, N, 1000, image_token_id, num_images=1)
    assert len(sample.labels) == len(sample.input_ids)
    assert [r.strip() for r in supervised_runs(sample, tok)] == ["red" + END[name], "yes" + END[name]]
    # labels are the input ids themselves where supervised (the model shifts them)
    assert all(lab in (IGNORE_INDEX, i) for lab, i in zip(sample.labels, sample.input_ids))


def test_system_turn_replaces_default_and_gemma_prepends_it(tok, image_token_id):
    conv = [{"from": "system", "value": "Be brief."}] + CONV[:2]
    chatml = tokenize_conversation(conv, tok, "chatml", N, 1000, image_token_id)
    assert tok.decode(chatml.input_ids[: chatml.image_starts[0]]).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    gemma = tokenize_conversation(conv, tok, "gemma", N, 1000, image_token_id)
    assert tok.decode(gemma.input_ids[: gemma.image_starts[0]]) == "<bos><start_of_turn>user\nBe brief.\n\n"


def test_image_expansion_and_spans(tok, image_token_id):
    conv = [{"from": "human", "value": "<image> and <image>: same?"}, {"from": "gpt", "value": "no"}]
    sample = tokenize_conversation(conv, tok, "llama-3", N, 1000, image_token_id, num_images=2)
    assert len(sample.image_starts) == 2
    for start in sample.image_starts:
        assert sample.input_ids[start : start + N] == [image_token_id] * N
        assert sample.labels[start : start + N] == [IGNORE_INDEX] * N
    assert sample.input_ids.count(image_token_id) == 2 * N
    between = sample.input_ids[sample.image_starts[0] + N : sample.image_starts[1]]
    assert tok.decode(between) == " and "


def test_truncation_moves_the_cut_before_a_visual_span(tok, image_token_id):
    conv = CONV[:2] + [{"from": "human", "value": "And <image>?"}, {"from": "gpt", "value": "blue"}]
    full = tokenize_conversation(conv, tok, "chatml", N, 1000, image_token_id, num_images=2)
    second = full.image_starts[1]
    cut = tokenize_conversation(conv, tok, "chatml", N, second + 1, image_token_id, num_images=2)
    assert len(cut.input_ids) == second  # not second + 1: that would hold one token of the image
    assert cut.image_starts == full.image_starts[:1]
    assert cut.input_ids == full.input_ids[:second]
    assert supervised_runs(cut, tok) == ["red<|im_end|>"]
    exact = tokenize_conversation(conv, tok, "chatml", N, second + N, image_token_id, num_images=2)
    assert exact.image_starts == full.image_starts  # a span ending exactly at max_length stays


def test_truncation_without_supervision_left_is_an_error(tok, image_token_id):
    with pytest.raises(SampleError) as err:
        tokenize_conversation(CONV, tok, "chatml", N, 30, image_token_id, num_images=1)
    assert err.value.reason == "truncated_no_supervision"


def test_no_supervised_tokens(tok, image_token_id):
    with pytest.raises(SampleError) as err:
        tokenize_conversation([{"from": "human", "value": "hello?"}], tok, "vicuna-v1", N, 1000, image_token_id)
    assert err.value.reason == "no_supervised_tokens"


def test_image_count_mismatch(tok, image_token_id):
    with pytest.raises(SampleError) as err:
        tokenize_conversation(CONV, tok, "chatml", N, 1000, image_token_id, num_images=2)
    assert err.value.reason == "image_count_mismatch"


@pytest.mark.parametrize("conv", [
    [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "?"}],
    [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}],
    [{"from": "robot", "value": "a"}],
    [{"from": "human", "value": "q"}, {"from": "gpt", "value": "<image>"}],
    [],
])
def test_malformed(tok, image_token_id, conv):
    with pytest.raises(SampleError) as err:
        tokenize_conversation(conv, tok, "chatml", N, 1000, image_token_id)
    assert err.value.reason == "malformed"


def _char_tokenizer(specials: list[str]) -> PreTrainedTokenizerFast:
    """Printable ASCII only: any other character becomes [UNK] and cannot be decoded back."""
    vocab = {ch: i for i, ch in enumerate(["[UNK]"] + sorted(set(string.printable)))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[UNK]")


def test_tokenization_mismatch_is_detected(image_token_id):
    tok = _char_tokenizer(["<|im_start|>", "<|im_end|>"])
    ok = tokenize_conversation(CONV, tok, "chatml", N, 1000, image_token_id)  # ASCII round-trips
    assert len(ok.image_starts) == 1
    with pytest.raises(SampleError) as err:
        tokenize_conversation([{"from": "human", "value": "héllo"}, {"from": "gpt", "value": "ok"}],
                              tok, "chatml", N, 1000, image_token_id)
    assert err.value.reason == "tokenization_mismatch"


def test_template_not_matching_the_tokenizer_is_a_config_error():
    tok = _char_tokenizer(["<|im_start|>", "<|im_end|>"])
    validate_template(tok, "chatml")
    with pytest.raises(ValueError, match="<|eot_id|>"):
        validate_template(tok, "llama-3")
    with pytest.raises(ValueError, match="chatml, gemma, llama-3, vicuna-v1"):
        get_template("vicuna")


def test_sentencepiece_prefix_space_is_not_doubled(image_token_id):
    """With a legacy Llama-2 tokenizer (prepends "▁" to every encode call, as HF's LlamaConverter builds it),
    piece-wise ids equal the ids of the whole rendered prompt, so training sees what inference sees."""
    vocab = {ch: i for i, ch in enumerate(sorted(set(string.printable) | {"\u2581"}))}
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    raw.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    raw.add_special_tokens(["<s>", "</s>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    conv = [{"from": "human", "value": "Name it."}, {"from": "gpt", "value": "red box"}]
    sample = tokenize_conversation(conv, tok, "vicuna-v1", N, 1000, image_token_id)
    whole = GOLDEN["vicuna-v1"].split(" USER:")[0] + " USER: Name it. ASSISTANT: red box</s>"
    assert sample.input_ids == tok.encode(whole, add_special_tokens=False)
    assert tok.decode([i for i in sample.labels if i != IGNORE_INDEX]) == "red box</s>"


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_prompt_is_the_training_rendering_up_to_the_answer(tok, image_token_id, name):
    # A chat history (question, answer, question) is the training sample (q, a, q, a) cut before its last answer.
    sample = tokenize_conversation(CONV, tok, name, N, 1000, image_token_id, num_images=1)
    supervised = [i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX]
    last_answer = next(i for i, j in zip(supervised[1:], supervised) if i != j + 1)
    prompt = tokenize_prompt(CONV[:3], tok, name, N, image_token_id, num_images=1)
    assert prompt.input_ids == sample.input_ids[:last_answer]
    assert prompt.image_starts == sample.image_starts
    before, after = GOLDEN[name].split("<image>")
    answer_prefix = get_template(name).answer_prefix  # vicuna's " " before "yes" is supervised: the model writes it
    expected = (before + after)[: (before + after).rindex(answer_prefix + "yes" + END[name])]
    start = prompt.image_starts[0]
    assert tok.decode(prompt.input_ids[:start] + prompt.input_ids[start + N:]) == expected


def test_prompt_must_end_with_a_question(tok, image_token_id):
    with pytest.raises(SampleError) as err:
        tokenize_prompt(CONV, tok, "chatml", N, image_token_id, num_images=1)
    assert err.value.reason == "malformed"
    with pytest.raises(SampleError) as err:  # the image count is checked as for training samples
        tokenize_prompt(CONV[:1], tok, "chatml", N, image_token_id, num_images=0)
    assert err.value.reason == "image_count_mismatch"
