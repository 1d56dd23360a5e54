"""`vregion chat`: answers equal VisionLanguageModel.generate's, history as training renders it, sampling, streaming."""

from __future__ import annotations

import pytest
import torch

from tests.chat.conftest import QUESTION, TEMPLATE
from vregion.chat import ChatModel, Conversation, Sampling
from vregion.chat.stream import TextDeltas
from vregion.chat.terminal import TerminalChat
from vregion.cli import main
from vregion.constants import IGNORE_INDEX
from vregion.data import ImageProcessor, tokenize_conversation
from vregion.models import load_checkpoint
from vregion.models.sampling import next_token

MAX_NEW = 12


def reference_answer(checkpoint, image_path, question: str) -> tuple[list[int], str]:
    """The answer generate() gives to the training rendering of `question` about the image (no chat code)."""
    model, tok, _ = load_checkpoint(checkpoint)
    model.eval()
    turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": "x"}]
    n = model.num_visual_tokens
    sample = tokenize_conversation(turns, tok, TEMPLATE, n, 256, tok.pad_token_id, num_images=1)
    cut = next(i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX)  # where the answer starts
    ids = torch.tensor([sample.input_ids[:cut]])
    vision = model.vision
    pixels = ImageProcessor(vision.image_size, vision.image_mean, vision.image_std, vision.image_aspect)(
        image_path.read_bytes())[None]
    stop = [tok.encode("</s>", add_special_tokens=False)[0], tok.eos_token_id]
    new = model.generate(ids, torch.ones_like(ids), pixels, torch.tensor([[0, sample.image_starts[0], n]]),
                         max_new_tokens=MAX_NEW, eos_token_id=stop, pad_token_id=tok.pad_token_id)[0].tolist()
    tokens = new[: next((i for i, t in enumerate(new) if t in stop), len(new))]
    return tokens, tok.decode(tokens, skip_special_tokens=True).strip()


def test_prompt_prints_the_answer_generate_gives(trained, checkpoint, capsys):
    tokens, text = reference_answer(checkpoint, trained / "red.png", QUESTION)
    assert text  # a trained model says something: the comparison below compares words
    code = main(["chat", str(checkpoint), "--image", str(trained / "red.png"), "--prompt", QUESTION,
                 "--max-new-tokens", str(MAX_NEW)])
    assert code == 0
    assert capsys.readouterr().out == text + "\n"  # stdout holds the answer and nothing else
    chat = ChatModel.load(checkpoint)
    reply = chat.reply(Conversation(chat.read_image((trained / "red.png").read_bytes())), QUESTION,
                       Sampling(max_new_tokens=MAX_NEW)).wait()
    assert reply.tokens == tokens  # the same token ids, not only the same text


def test_compare_answers_with_both_checkpoints(trained, checkpoint, capsys):
    _, text = reference_answer(checkpoint, trained / "blue.png", QUESTION)
    code = main(["chat", str(checkpoint), "--compare", str(checkpoint), "--compress", "16/2", "--image",
                 str(trained / "blue.png"), "--prompt", QUESTION, "--max-new-tokens", str(MAX_NEW)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"[{checkpoint}] ") for line in lines)
    assert lines[0] == lines[1]  # the same checkpoint and settings answer the same


def test_history_is_rendered_as_the_training_conversation(trained, checkpoint):
    chat = ChatModel.load(checkpoint)
    conversation = Conversation(chat.read_image((trained / "red.png").read_bytes()))
    first = chat.reply(conversation, QUESTION, Sampling(max_new_tokens=MAX_NEW)).wait()
    conversation.add(QUESTION, first.text)
    inputs = chat.inputs(conversation, "What shape is this?")
    training = [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": first.text},
                {"from": "human", "value": "What shape is this?"}, {"from": "gpt", "value": "circle"}]
    tok = chat.tokenizer
    sample = tokenize_conversation(training, tok, TEMPLATE, 4, 256, tok.pad_token_id, num_images=1)
    supervised = [i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX]
    second_answer = next(i for i, j in zip(supervised[1:], supervised) if i != j + 1)
    assert inputs["input_ids"][0].tolist() == sample.input_ids[:second_answer]
    assert inputs["image_spans"].tolist() == [[0, sample.image_starts[0], 4]]
    text = tok.decode(inputs["input_ids"][0].tolist())
    assert text.endswith(f"USER: What shape is this? ASSISTANT:") and f"ASSISTANT: {first.text}</s>USER:" in text


@pytest.mark.parametrize("compress", ["none", "16/2"])  # cached decoding, and decoding through the pooling runner
def test_streamed_and_sampled_answers(trained, checkpoint, compress):
    chat = ChatModel.load(checkpoint, compress)
    assert (chat.model.runner.between_layers is None) == (compress == "none")
    image = chat.read_image((trained / "blue.png").read_bytes())
    greedy = chat.reply(Conversation(image), QUESTION, Sampling(max_new_tokens=MAX_NEW))
    deltas = list(greedy)
    assert "".join(deltas) == greedy.text and len(greedy.tokens) >= 1
    inputs = chat.inputs(Conversation(image), QUESTION)
    new = chat.model.generate(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                              inputs["image_spans"], max_new_tokens=MAX_NEW, eos_token_id=chat.stop_ids,
                              pad_token_id=chat.tokenizer.pad_token_id)[0].tolist()
    assert greedy.tokens == new[: len(greedy.tokens)]
    # A nucleus this small keeps only the most likely token: sampling then is greedy decoding.
    narrow = chat.reply(Conversation(image), QUESTION, Sampling(MAX_NEW, temperature=1.0, top_p=1e-6)).wait()
    assert narrow.tokens == greedy.tokens
    hot = Sampling(MAX_NEW, temperature=50.0, top_p=1.0)  # near uniform over the vocabulary
    torch.manual_seed(3)
    a = chat.reply(Conversation(image), QUESTION, hot).wait().tokens
    torch.manual_seed(3)
    b = chat.reply(Conversation(image), QUESTION, hot).wait().tokens
    assert a == b and a != greedy.tokens  # repeatable with the seed, and really sampled


def test_next_token_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.3, 0.1]])).expand(4000, 4)  # (B, V)
    generator = torch.Generator().manual_seed(0)
    picks = next_token(logits, do_sample=True, top_p=0.7, generator=generator)
    # 0.5 alone is under 0.7, so 0.3 joins; the rest is cut. Renormalised: 5/8 and 3/8.
    assert set(picks.tolist()) == {1, 2}
    assert (picks == 1).float().mean().item() == pytest.approx(5 / 8, abs=0.03)
    assert next_token(logits, do_sample=False).tolist() == [1] * 4000


def test_text_deltas_add_up_and_never_split_a_character(trained, checkpoint):
    tok = load_checkpoint(checkpoint)[1]
    ids = tok.encode(" héllo wörld ✓ ", add_special_tokens=False)
    deltas = TextDeltas(tok)
    pieces = [deltas.push(t) for t in ids] + [deltas.finish()]
    assert len(ids) > len("héllo wörld ✓")  # byte tokens: characters span several tokens
    assert "".join(pieces) == "héllo wörld ✓" == deltas.text
    assert not any("\ufffd" in p for p in pieces)


def test_terminal_session_switches_images_and_keeps_history(trained, checkpoint):
    chat = ChatModel.load(checkpoint)
    lines = iter([QUESTION, "/bogus", "Are you sure?", f"/image {trained / 'blue.png'}", QUESTION,
                  f"/image {trained / 'corrupt.png'}", "/quit", "never read"])
    out = __import__("io").StringIO()
    session = TerminalChat([chat], Sampling(max_new_tokens=MAX_NEW), out=out)
    session.set_image(str(trained / "red.png"))
    session.loop(read=lambda prompt: next(lines))
    assert next(lines) == "never read"  # /quit ended the loop
    _, red = reference_answer(checkpoint, trained / "red.png", QUESTION)
    _, blue = reference_answer(checkpoint, trained / "blue.png", QUESTION)
    printed = out.getvalue().splitlines()
    assert printed[1] == red and printed[-2] == blue  # /image started a new conversation about blue.png
    assert "unknown command /bogus" in printed[2]
    assert printed[-1].startswith("error: ") and "corrupt.png" in printed[-1] and "cannot decode image" in printed[-1]
    assert [q for q, _ in session.conversations[0].turns] == [QUESTION]  # the failed /image kept that history


@pytest.mark.parametrize("flags, message", [
    (["--compress", "9/x"], "--compress"),
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top-p"),
    (["--max-new-tokens", "0"], "max new tokens"),
    (["--image", "/nonexistent.png"], "no such file"),
])
def test_bad_arguments_exit_2_before_loading(checkpoint, no_model, capsys, flags, message):
    assert main(["chat", str(checkpoint), "--prompt", "hi", *flags]) == 2
    assert message in capsys.readouterr().err


def test_corrupt_image_and_missing_checkpoint_exit_2(trained, checkpoint, capsys):
    assert main(["chat", str(checkpoint), "--image", str(trained / "corrupt.png"), "--prompt", "hi"]) == 2
    assert "corrupt.png" in capsys.readouterr().err
    assert main(["chat", str(trained), "--prompt", "hi"]) == 2
    assert "not a vregion checkpoint" in capsys.readouterr().err
