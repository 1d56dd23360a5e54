"""`vregion export`: a tiny checkpoint exported to HF LLaVA gives vregion's logits, answers and preprocessing."""

from __future__ import annotations

import io
import json
import random

import pytest
import torch
from PIL import Image
from tokenizers import processors
from transformers import AutoProcessor, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, LlavaForConditionalGeneration
from transformers.utils.chat_template_utils import render_jinja_template

from tests.models.tiny import tiny_model_config
from vregion.cli import main
from vregion.compress import scale_layer
from vregion.config import VisionConfig, to_dict
from vregion.data import IGNORE_INDEX, TEMPLATES, ImageProcessor, tokenize_conversation
from vregion.data.synthetic import draw_shape
from vregion.data.tokenizer import build_byte_tokenizer
from vregion.models import build_vlm, load_checkpoint, save_checkpoint
from vregion.models.backbones import TINY_VIT_DEFAULTS
from vregion.models.hf_export import RECORD_FILE, ExportError, chat_template, export_checkpoint

PAD_RIGHT = 5  # row 1 of the batch is right-padded by this many tokens
START = 3  # the image span starts here in every row


def make_checkpoint(tmp_path, cfg, compress=None):
    model, tokenizer = build_vlm(cfg)
    config = {"model": to_dict(cfg)} | ({"compress": compress} if compress else {})
    path = save_checkpoint(model, config, tokenizer, tmp_path / "ckpt")
    return model.eval(), tokenizer, path


def export(tmp_path, cfg):
    model, tokenizer, ckpt = make_checkpoint(tmp_path, cfg)
    result = export_checkpoint(ckpt, tmp_path / "hf", "hf")
    assert result["format"] == "hf"
    return model, tokenizer, LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()


def inputs(model, tokenizer, hf):
    """The same batch for both: vregion's (placeholders + spans) and LLaVA's (image tokens expanded)."""
    n = model.num_visual_tokens
    length = START + n + 9  # text, image, text (the last PAD_RIGHT of row 1 padding)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (2, length), generator=g)  # (B, T) byte tokens
    mask = torch.ones_like(ids)
    mask[1, -PAD_RIGHT:] = 0
    ids[1, -PAD_RIGHT:] = tokenizer.pad_token_id
    ids[:, START : START + n] = tokenizer.pad_token_id
    size = model.vision.image_size
    pixels = torch.randn(2, 3, size, size, generator=g)  # (M, 3, S, S)
    spans = torch.tensor([[0, START, n], [1, START, n]])
    hf_ids = ids.clone()
    hf_ids[:, START : START + n] = hf.config.image_token_index
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_spans=spans), hf_ids


def assert_same_logits(model, tokenizer, hf, atol=1e-5):
    ours, hf_ids = inputs(model, tokenizer, hf)
    with torch.no_grad():
        expected = model(**ours)["logits"]  # (B, T, V)
        got = hf(input_ids=hf_ids, attention_mask=ours["attention_mask"], pixel_values=ours["pixel_values"]).logits
    real = ours["attention_mask"].bool()  # padded positions' logits are undefined in both
    vocab = expected.shape[-1]
    assert got.shape[:2] == expected.shape[:2] and got.shape[-1] >= vocab
    torch.testing.assert_close(got[..., :vocab][real], expected[real], atol=atol, rtol=1e-4)
    return expected, got


@pytest.mark.parametrize("vision,llm,projector", [
    ("clip", "llama", "mlp2x_gelu"),
    ("siglip", "llama", "mlp2x_gelu"),
    ("clip", "qwen2", "mlp2x_gelu"),
    ("clip", "gemma3", "mlp2x_gelu"),
    ("clip", "llama", "linear"),
])
def test_exported_llava_gives_vregion_logits(tmp_path, vision, llm, projector):
    cfg = tiny_model_config(llm, vision, projector)
    if llm == "gemma3":
        cfg.llm.tiny["final_logit_softcapping"] = None  # Gemma 3's own setting; the capped variant is refused below
    model, tokenizer, hf = export(tmp_path, cfg)
    cfg = hf.config
    assert cfg.vision_feature_layer == model.vision.feature_layer == -2
    assert cfg.vision_feature_select_strategy == ("default" if vision == "clip" else "full")
    assert cfg.projector_hidden_act == ("gelu" if projector == "mlp2x_gelu" else "linear")
    assert cfg.image_seq_length == model.num_visual_tokens
    assert cfg.image_token_index == len(tokenizer)  # one token added after the checkpoint's tokenizer
    assert_same_logits(model, tokenizer, hf)


def test_exported_llava_generates_vregion_answers(tmp_path):
    model, tokenizer, hf = export(tmp_path, tiny_model_config("llama"))
    ours, hf_ids = inputs(model, tokenizer, hf)
    # Left padding for generation: row 1's pad moves to the front, its image span with it.
    keep = ours["attention_mask"][1].bool()
    mask = torch.cat([torch.zeros(PAD_RIGHT, dtype=torch.long), ours["attention_mask"][1][keep]])
    ours["attention_mask"][1] = mask
    ours["input_ids"][1] = torch.cat([ours["input_ids"][1][~keep], ours["input_ids"][1][keep]])
    hf_ids[1] = torch.cat([hf_ids[1][~keep], hf_ids[1][keep]])
    ours["image_spans"][1, 1] += PAD_RIGHT
    stop = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    expected = model.generate(**ours, max_new_tokens=6, **stop)
    with torch.no_grad():
        got = hf.generate(input_ids=hf_ids, attention_mask=ours["attention_mask"], pixel_values=ours["pixel_values"],
                          max_new_tokens=6, do_sample=False, **stop)[:, hf_ids.shape[1]:]
    assert expected.shape[1] > 1
    assert torch.equal(got[:, : expected.shape[1]], expected)


def test_resolution_change_and_narrow_projector_are_exact(tmp_path):
    # 48 px on a 32 px tower: vregion interpolates position embeddings per call, the export bakes the same table.
    tower = tmp_path / "tower"  # a saved tower: a tiny one would simply be built at 48 px
    CLIPVisionModel(CLIPVisionConfig(**TINY_VIT_DEFAULTS)).save_pretrained(tower)
    cfg = tiny_model_config("llama")
    cfg.vision = VisionConfig(type="clip", path=str(tower), image_size=48)
    cfg.projector.hidden_size = 40  # narrower than the LLM's 64, as after a VPG transfer
    model, tokenizer, hf = export(tmp_path, cfg)
    assert model.vision.interpolate and hf.config.vision_config.image_size == 48
    assert model.num_visual_tokens == 36 == hf.config.image_seq_length
    assert_same_logits(model, tokenizer, hf)


def test_projector_wider_than_the_llm_is_refused(tmp_path):
    cfg = tiny_model_config("llama")
    cfg.projector.hidden_size = 96
    _, _, ckpt = make_checkpoint(tmp_path, cfg)
    with pytest.raises(ExportError, match="inner width 96"):
        export_checkpoint(ckpt, tmp_path / "hf", "hf")
    assert not (tmp_path / "hf").exists()


def test_soft_capped_logits_are_refused_and_auto_keeps_the_vregion_format(tmp_path):
    _, _, ckpt = make_checkpoint(tmp_path, tiny_model_config("gemma3"))  # final_logit_softcapping 5.0
    with pytest.raises(ExportError, match="soft-caps"):
        export_checkpoint(ckpt, tmp_path / "hf", "hf")
    result = export_checkpoint(ckpt, tmp_path / "auto", "auto")
    assert result["format"] == "vregion" and "soft-caps" in result["reason"]
    assert (tmp_path / "auto" / "model.safetensors").exists()


def test_image_token_outside_the_vocabulary_grows_it_without_changing_answers(tmp_path):
    cfg = tiny_model_config("llama")
    cfg.llm.tiny["vocab_size"] = 268  # exactly the tokenizer's size: <image> gets id 268, outside the matrix
    model, tokenizer, hf = export(tmp_path, cfg)
    assert hf.config.image_token_index == 268 and hf.config.text_config.vocab_size == 320
    expected, got = assert_same_logits(model, tokenizer, hf)
    real = torch.ones(got.shape[:2], dtype=torch.bool)
    real[1, -PAD_RIGHT:] = False
    # The grown rows are the mean row: their logit is the mean of the real ones, never the greedy choice.
    torch.testing.assert_close(got[real][:, 268:], expected[real].mean(-1, keepdim=True).expand(-1, 52),
                               atol=1e-5, rtol=1e-4)
    assert (got[real].argmax(-1) < 268).all()


def test_processor_prepares_inputs_like_vregion(tmp_path):
    model, tokenizer, hf = export(tmp_path, tiny_model_config("llama"))
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    image = Image.open(io.BytesIO(draw_shape("circle", (220, 30, 30), 40, random.Random(0))))
    batch = processor(text="USER: <image>\nWhat colour is this? ASSISTANT:", images=image, return_tensors="pt")
    ours = ImageProcessor(model.vision.image_size, model.vision.image_mean, model.vision.image_std)(image)
    torch.testing.assert_close(batch["pixel_values"][0], ours, atol=2e-2, rtol=0)  # PIL bicubic both ways
    ids = batch["input_ids"]
    is_image = ids[0] == hf.config.image_token_index
    n = model.num_visual_tokens
    start = int(is_image.nonzero()[0])
    assert int(is_image.sum()) == n and bool(is_image[start : start + n].all())  # one contiguous span
    ours_ids = ids.masked_fill(ids == hf.config.image_token_index, tokenizer.pad_token_id)
    with torch.no_grad():
        expected = model(input_ids=ours_ids, attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"],
                         image_spans=torch.tensor([[0, start, n]]))["logits"]
        got = hf(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_auto_keeps_the_vregion_format_for_other_backbones(tmp_path, capsys):
    cfg = tiny_model_config("llama", vision="efficientnet-lite0")
    cfg.vision.image_size = 64
    model, _, ckpt = make_checkpoint(tmp_path, cfg)
    assert main(["export", str(ckpt), str(tmp_path / "hf"), "--format", "hf"]) == 2
    assert "efficientnet-lite0" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    assert main(["export", str(ckpt), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "kept the vregion format" in printed and "load_checkpoint" in printed
    loaded, _, _ = load_checkpoint(tmp_path / "out")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("compress,stride", [
    ({"schedule": "last-stage-compression"}, 4),  # the preset keeps 16/4 at inference
    ({"schedule": None, "inference": "8/2"}, 2),  # an explicit inference setting
])
def test_inference_compression_is_refused_unless_allowed_and_recorded(tmp_path, capsys, compress, stride):
    cfg = tiny_model_config("llama")
    cfg.llm.tiny["num_hidden_layers"] = 4  # K scales 16 -> 2 and 8 -> 1
    model, tokenizer, ckpt = make_checkpoint(tmp_path, cfg, compress)
    layer = scale_layer(16 if stride == 4 else 8, model.runner.num_layers)
    assert main(["export", str(ckpt), str(tmp_path / "hf"), "--format", "hf"]) == 2
    err = capsys.readouterr().err
    assert f"layer K={layer}, stride S={stride}" in err and "cannot pool inside the LLM" in err
    assert "--allow-uncompressed" in err and not (tmp_path / "hf").exists()
    with pytest.raises(ExportError, match=f"K={layer}, stride S={stride}"):
        export_checkpoint(ckpt, tmp_path / "auto")  # auto refuses too rather than drop the pooling
    assert main(["export", str(ckpt), str(tmp_path / "hf"), "--allow-uncompressed"]) == 0
    assert "runs uncompressed" in capsys.readouterr().err
    record = json.loads((tmp_path / "hf" / RECORD_FILE).read_text())
    assert record["inference_compression"] == {"layer": layer, "stride": stride} and record["runs_uncompressed"]
    assert "uncompressed" in record["note"]
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert_same_logits(model, tokenizer, hf)  # the same model as vregion's without pooling


def test_uncompressed_schedule_exports_without_the_flag(tmp_path):
    _, _, ckpt = make_checkpoint(tmp_path, tiny_model_config("llama"), {"schedule": "two"})  # inference: none
    result = export_checkpoint(ckpt, tmp_path / "hf", "hf")
    assert result["format"] == "hf" and result["warning"] is None
    record = json.loads((tmp_path / "hf" / RECORD_FILE).read_text())
    assert record["inference_compression"] is None and not record["runs_uncompressed"]


# Every vregion chat template, on the tiny LLM family it belongs to.
TEMPLATE_LLMS = {"vicuna-v1": "llama", "llama-3": "llama", "chatml": "qwen2", "gemma": "gemma3"}


def training_ids(conversations, tokenizer, template, n, image_token_id, prompt_only):
    """The ids vregion trains on: the whole conversation, or up to the start of its last answer."""
    sample = tokenize_conversation(conversations, tokenizer, template, n, 4096, image_token_id)
    if not prompt_only:
        return sample.input_ids
    start = max(i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX)
    while sample.labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return sample.input_ids[:start]


def test_every_template_is_exported():
    assert set(TEMPLATE_LLMS) == set(TEMPLATES)


@pytest.mark.parametrize("template", sorted(TEMPLATE_LLMS))
def test_chat_template_gives_the_training_prompt(tmp_path, template):
    cfg = tiny_model_config(TEMPLATE_LLMS[template], template=template)
    cfg.llm.tiny["final_logit_softcapping"] = None  # Gemma 3 exports only uncapped
    model, tokenizer, ckpt = make_checkpoint(tmp_path, cfg)
    export_checkpoint(ckpt, tmp_path / "hf", "hf")
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").chat_template == processor.chat_template
    image_id, n = processor.image_token_id, model.num_visual_tokens
    image = Image.open(io.BytesIO(draw_shape("circle", (220, 30, 30), 40, random.Random(0))))
    question = [{"type": "image"}, {"type": "text", "text": "What colour is this?"}]
    cases = [  # (HF messages, vregion conversation), each with its last answer
        ([{"role": "user", "content": question}, {"role": "assistant", "content": "Red."}],
         [{"from": "human", "value": "<image>\nWhat colour is this?"}, {"from": "gpt", "value": "Red."}]),
        ([{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": question},
          {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
          {"role": "user", "content": "And its shape?"}, {"role": "assistant", "content": "Round."}],
         [{"from": "system", "value": "Answer in one word."},
          {"from": "human", "value": "<image>\nWhat colour is this?"}, {"from": "gpt", "value": "Red."},
          {"from": "human", "value": "And its shape?"}, {"from": "gpt", "value": "Round."}]),
    ]
    for messages, conversation in cases:
        for prompt_only in (True, False):
            chat = messages[:-1] if prompt_only else messages
            text = processor.apply_chat_template(chat, add_generation_prompt=prompt_only, tokenize=False)
            got = processor(text=text, images=image)["input_ids"][0]
            got = got.tolist() if hasattr(got, "tolist") else list(got)
            expected = training_ids(conversation, tokenizer, template, n, image_id, prompt_only)
            assert got == expected, (template, text)
            assert got.count(image_id) == n


def test_chat_template_leaves_bos_to_a_tokenizer_that_adds_it():
    plain, adding = build_byte_tokenizer(), build_byte_tokenizer()
    bos = plain.convert_tokens_to_ids("<s>")
    adding.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                                            special_tokens=[("<s>", bos)])

    def prompt(tokenizer):
        return render_jinja_template([[{"role": "user", "content": "Hi"}]], add_generation_prompt=True,
                                     chat_template=chat_template(tokenizer, "vicuna-v1"))[0][0]

    assert prompt(plain).startswith("<s>") and not prompt(adding).startswith("<s>")
    expected = training_ids([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}], plain,
                            "vicuna-v1", 0, 0, prompt_only=True)
    assert expected.count(bos) == 1
    assert adding(prompt(adding))["input_ids"] == expected == plain(prompt(plain))["input_ids"]
