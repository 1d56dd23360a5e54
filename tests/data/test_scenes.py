"""Generated scenes: answers from hand-built scenes, answers recomputed from the description, held-out
colour-shape pairs, balance, determinism, pixels where the description says."""

from __future__ import annotations

import collections
import io
import random

import pytest
from PIL import Image

from vregion.data import scenes
from vregion.data.scenes import SceneObject as O

# red large circle top-left, blue small square top-right, green small triangle bottom-middle
HAND = (O("circle", "red", "large", 0, 0), O("square", "blue", "small", 2, 0), O("triangle", "green", "small", 1, 2))
HAND_2 = HAND + (O("diamond", "red", "small", 2, 2),)


@pytest.mark.parametrize("scene, spec, expected", [
    (HAND, {"kind": "count"}, "three"),
    (HAND_2, {"kind": "count"}, "four"),
    (HAND_2, {"kind": "count_colour", "colour": "red"}, "two"),
    (HAND_2, {"kind": "count_colour", "colour": "purple"}, "zero"),
    (HAND_2, {"kind": "count_shape", "shape": "square"}, "one"),
    (HAND, {"kind": "colour_of", "shape": "triangle"}, "green"),
    (HAND, {"kind": "shape_of", "colour": "blue"}, "square"),
    (HAND, {"kind": "size_of", "a": ("red", "circle")}, "large"),
    (HAND, {"kind": "size_of", "a": ("blue", "square")}, "small"),
    (HAND, {"kind": "left_of", "a": ("red", "circle"), "b": ("blue", "square")}, "yes"),
    (HAND, {"kind": "left_of", "a": ("blue", "square"), "b": ("green", "triangle")}, "no"),
    (HAND, {"kind": "above", "a": ("blue", "square"), "b": ("green", "triangle")}, "yes"),
    (HAND, {"kind": "above", "a": ("green", "triangle"), "b": ("red", "circle")}, "no"),
    (HAND, {"kind": "extreme", "where": "leftmost", "attribute": "colour"}, "red"),
    (HAND, {"kind": "extreme", "where": "rightmost", "attribute": "shape"}, "square"),
    (HAND, {"kind": "extreme", "where": "bottommost", "attribute": "shape"}, "triangle"),
    (HAND_2, {"kind": "more_than", "colour": "red", "other": "blue"}, "yes"),
    (HAND_2, {"kind": "more_than", "colour": "blue", "other": "green"}, "no"),
    (HAND, {"kind": "bigger", "a": ("red", "circle"), "b": ("green", "triangle")}, "yes"),
    (HAND, {"kind": "bigger", "a": ("blue", "square"), "b": ("green", "triangle")}, "no"),
    (HAND, {"kind": "exists", "a": ("green", "triangle")}, "yes"),
    (HAND, {"kind": "exists", "a": ("green", "circle")}, "no"),
    (HAND, {"kind": "colour_at", "cell": (2, 0)}, "blue"),
    (HAND_2, {"kind": "colour_at", "cell": (2, 2)}, "red"),
    (HAND, {"kind": "shape_at", "cell": (1, 2)}, "triangle"),
])
def test_answers_of_hand_built_scenes(scene, spec, expected):
    assert scenes.answer(scene, spec) == expected
    assert scenes.question_text(spec).endswith("?")


def test_every_kind_is_asked_and_unknown_kinds_name_the_known_ones():
    kinds = {spec["kind"] for _, _, specs, _ in scenes.scene_questions("train", 300) for spec in specs}
    assert kinds == set(scenes.KINDS)
    grounded = scenes.KINDS + scenes.GROUNDING_KINDS
    kinds = {spec["kind"] for _, _, specs, _ in scenes.scene_questions("train", 300, kinds=grounded) for spec in specs}
    assert kinds == set(grounded)
    kinds = {spec["kind"] for _, _, specs, _ in scenes.scene_questions("train", 300, kinds=("count", "colour_at"))
             for spec in specs}
    assert kinds == {"count", "colour_at"}
    with pytest.raises(ValueError, match="count_colour"):
        scenes.answer(HAND, {"kind": "how_shiny"})


def test_cells_are_named_by_row_then_column_and_only_occupied_cells_are_asked():
    assert scenes.question_text({"kind": "colour_at", "cell": (0, 2)}) == "What colour is the object in the bottom left?"
    assert scenes.question_text({"kind": "shape_at", "cell": (1, 1)}) == "What shape is in the centre?"
    assert scenes.cell_name(2, 1) == "middle right" and scenes.cell_name(1, 0) == "top middle"
    cells = {tuple(s["cell"]) for s in scenes.candidate_specs(HAND)["colour_at"]}
    assert cells == {(0, 0), (2, 0), (1, 2)}


def test_ambiguous_questions_are_never_asked():
    # two squares: "What colour is the square?" has no single answer; same column: no left/right question
    scene = (O("square", "red", "small", 0, 0), O("square", "blue", "large", 0, 2))
    candidates = scenes.candidate_specs(scene)
    assert candidates["colour_of"] == [] and candidates["left_of"] == []
    assert len(candidates["above"]) == 2 and candidates["extreme"][0]["where"] == "topmost"


def test_stored_answers_equal_answers_recomputed_from_the_scene_description():
    for split in ("train", "eval"):
        samples = scenes.scene_samples(split, 60, image_size=48, seed=3)
        assert len(samples) == 120
        for sample in samples:
            scene = scenes.scene_from_dicts(sample["scene"])
            human, gpt = sample["conversations"]
            assert human["value"] == "<image>\n" + scenes.question_text(sample["question"])
            assert gpt["value"] == scenes.answer(scene, sample["question"])
            assert len(gpt["value"].split()) == 1


def test_dialogues_hold_a_scenes_questions_as_turns_with_recomputed_answers():
    dialogues = scenes.scene_samples("train", 40, image_size=48, seed=3, questions_per_scene=6, dialogue=True)
    singles = scenes.scene_samples("train", 40, image_size=48, seed=3, questions_per_scene=6)
    assert len(dialogues) == 40 and len(singles) == sum(len(d["questions"]) for d in dialogues)
    turns = []
    for sample in dialogues:
        scene = scenes.scene_from_dicts(sample["scene"])
        conv = sample["conversations"]
        assert len(sample["images"]) == 1 and [t["from"] for t in conv] == ["human", "gpt"] * len(sample["questions"])
        assert conv[0]["value"].startswith("<image>\n") and all("<image>" not in t["value"] for t in conv[1:])
        assert len(sample["questions"]) == 6 and len({str(q) for q in sample["questions"]}) == 6
        for spec, human, gpt in zip(sample["questions"], conv[::2], conv[1::2]):
            assert human["value"].removeprefix("<image>\n") == scenes.question_text(spec)
            assert gpt["value"] == scenes.answer(scene, spec)
            turns.append((human["value"].removeprefix("<image>\n"), gpt["value"]))
    # the same scenes and questions as one-question samples: a dialogue only regroups them
    assert turns == [(s["conversations"][0]["value"].removeprefix("<image>\n"), s["conversations"][1]["value"])
                     for s in singles]


def test_held_out_pairs_never_in_training_and_in_every_eval_scene():
    train = [scene for _, scene, _, _ in scenes.scene_questions("train", 2000)]
    shown = {o.pair for scene in train for o in scene}
    assert not shown & set(scenes.HELD_OUT_PAIRS)
    assert len(shown) == len(scenes.COLOURS) * len(scenes.SHAPES) - len(scenes.HELD_OUT_PAIRS)
    asked = {tuple(s["a"]) for _, _, specs, _ in scenes.scene_questions("train", 2000) for s in specs if "a" in s}
    assert not asked & set(scenes.HELD_OUT_PAIRS)  # not even "Is there a red triangle?" -> "no"
    about_held_out = 0
    for _, scene, specs, _ in scenes.scene_questions("eval", 500):
        held = [o.pair for o in scene if o.pair in scenes.HELD_OUT_PAIRS]
        assert held
        about_held_out += scenes.mentions(specs[0], held[0])
    assert about_held_out > 450  # the first question of an eval scene is about its held-out object


def test_eval_has_a_thousand_questions_with_balanced_yes_no_and_distinct_pairs():
    answers = collections.Counter()
    total = 0
    for _, scene, specs, _ in scenes.scene_questions("eval", 500):
        assert 2 <= len(scene) <= 4 and len({o.pair for o in scene}) == len(scene)
        assert len({(o.column, o.row) for o in scene}) == len(scene)
        assert len(specs) == 2 and specs[0] != specs[1]
        total += len(specs)
        answers.update(scenes.answer(scene, s) for s in specs if s["kind"] in scenes.YES_NO_KINDS)
    assert total >= 1000
    assert 0.4 < answers["yes"] / (answers["yes"] + answers["no"]) < 0.6


def test_same_seed_same_bytes_other_seed_other_scenes():
    a = scenes.scene_samples("eval", 8, image_size=64, seed=1)
    b = scenes.scene_samples("eval", 8, image_size=64, seed=1)
    c = scenes.scene_samples("eval", 8, image_size=64, seed=2)
    assert [s["images"] for s in a] == [s["images"] for s in b]
    assert [s["conversations"] for s in a] == [s["conversations"] for s in b]
    assert [s["scene"] for s in a] != [s["scene"] for s in c]
    with pytest.raises(ValueError, match="split"):
        scenes.random_scene(random.Random(0), "validation")


def test_pixels_show_each_object_in_its_colour_and_cell():
    image = scenes.render(HAND_2, 96)  # centred, no jitter
    cell = 96 // scenes.GRID
    for obj in HAND_2:
        centre = (obj.column * cell + cell // 2, obj.row * cell + cell // 2)
        assert image.getpixel(centre) == scenes.COLOURS[obj.colour], obj
    assert image.getpixel((cell + cell // 2, cell // 2)) == scenes.BACKGROUND  # empty top-middle cell
    # a large shape covers more of its cell than a small one
    big = sum(image.getpixel((x, y)) == scenes.COLOURS["red"] for x in range(cell) for y in range(cell))
    small = sum(image.getpixel((x, y)) == scenes.COLOURS["blue"] for x in range(2 * cell, 96) for y in range(cell))
    assert big > 2 * small
    stored = scenes.scene_samples("train", 1, image_size=40)[0]["images"][0]
    assert Image.open(io.BytesIO(stored)).size == (40, 40)
