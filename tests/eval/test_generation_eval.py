"""Exact-match normalisation and prompt splitting for generation-based evaluation."""

from vregion.data import build_loader, ImageProcessor, make_synthetic_shards
from vregion.data.tokenizer import build_byte_tokenizer
from vregion.eval import normalize_answer, split_prompts
from vregion.eval.generation import left_padded


def test_normalize_answer_known_cases():
    assert normalize_answer("The T-shirt.") == "t-shirt"
    assert normalize_answer("  Two  dogs!\n") == "2 dogs"
    assert normalize_answer("an Ankle boot") == "ankle boot"
    assert normalize_answer("Trouser") != normalize_answer("Trousers")


def test_split_prompts_cuts_at_the_answer_and_left_padding_keeps_spans(tmp_path):
    make_synthetic_shards(tmp_path, num_samples=8, image_size=16, seed=0, samples_per_shard=8)
    tok = build_byte_tokenizer()
    batch = next(iter(build_loader(
        str(tmp_path), tokenizer=tok, template="chatml", image_processor=ImageProcessor(16, (0.5,) * 3, (0.5,) * 3),
        num_image_tokens=4, image_token_id=tok.pad_token_id, max_length=512, micro_batch_size=8, seed=0,
        shuffle_buffer=0, infinite=False,
    )))
    items = split_prompts(batch, tok)
    assert len(items) == 8
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    for b, it in enumerate(items):
        labels = batch["labels"][b]
        first = int((labels != -100).nonzero()[0])
        assert it["prompt"] == batch["input_ids"][b, :first].tolist()
        assert it["end_id"] == end_id
        assert tok.decode(it["prompt"]).endswith("<|im_start|>assistant\n")
        assert it["gold"] and "<|im_end|>" not in it["gold"]
    padded = left_padded(items, batch["pixel_values"], tok.pad_token_id, num_tokens=4)
    for (b, start, length), pixels in zip(padded["image_spans"].tolist(), padded["pixel_values"]):
        if b < 0:
            continue
        assert length == 4
        assert padded["attention_mask"][b, start] == 1 and padded["attention_mask"][b, start - 1 :].all()
        assert (padded["input_ids"][b, start : start + 4] == tok.pad_token_id).all()
    assert padded["attention_mask"].sum(1).tolist() == [len(it["prompt"]) for it in items]
