"""Generated compositional scenes and questions about them: the demo's task where the LLM must do work.

A scene is 2-4 shapes (circle, square, triangle, diamond) in six colours, small or large, each in its own
cell of a 3x3 grid (jittered inside it), so "left of" and "above" are never ambiguous. Questions ask for
counts, attributes of a unique object, sizes, spatial relations, extremes ("the leftmost object"),
comparisons and existence; answers are one word. `GROUNDING_KINDS` (what is in a named cell) can be added
to training questions; eval scenes never ask them. A question is a spec (a small dict); its text and its
answer are pure functions of the spec and the scene (`question_text`, `answer`), so tests recompute
every answer from the scene description instead of trusting a stored one.

Held-out combinations: the colour-shape pairs in `HELD_OUT_PAIRS` never appear in a training scene; every
eval scene holds at least one of them, and half its questions are about that object. Yes/no questions are
drawn half "yes", half "no". The same (split, count, seed) always gives the same scenes and pixels.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw

from .writer import dialogue_sample, png_bytes, question_sample

SHAPES = ("circle", "square", "triangle", "diamond")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds"}
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 20),
}
SIZES = ("small", "large")
HELD_OUT_PAIRS = (("red", "triangle"), ("blue", "circle"), ("green", "diamond"), ("yellow", "square"))
GRID = 3
NUMBERS = ("zero", "one", "two", "three", "four")
KINDS = ("count", "count_colour", "count_shape", "colour_of", "shape_of", "size_of", "left_of", "above",
         "extreme", "more_than", "bigger", "exists")
# Opt-in for training (`scene_questions(kinds=KINDS + GROUNDING_KINDS)`): what is in a named cell, to teach
# reading colour and shape at a place whatever the other attribute is. Measured in docs/results.md: no gain in
# 300 steps, so the demo does not ask them. Eval never asks them, so its questions stay comparable.
GROUNDING_KINDS = ("colour_at", "shape_at")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "middle", "right")
YES_NO_KINDS = ("left_of", "above", "more_than", "bigger", "exists")
BACKGROUND = (236, 236, 230)


@dataclass(frozen=True)
class SceneObject:
    """One shape: its attributes and grid cell (column 0 = left, row 0 = top)."""

    shape: str
    colour: str
    size: str
    column: int
    row: int

    @property
    def pair(self) -> tuple[str, str]:
        return self.colour, self.shape


Scene = tuple[SceneObject, ...]


def _name(pair) -> str:
    colour, shape = pair
    return f"{colour} {shape}"


def _find(scene: Scene, pair) -> SceneObject:
    (obj,) = [o for o in scene if o.pair == tuple(pair)]  # questions only name objects unique in the scene
    return obj


def cell_name(column: int, row: int) -> str:
    """A grid cell in words: "top left", "middle right", "centre"."""
    return "centre" if (column, row) == (1, 1) else f"{ROWS[row]} {COLUMNS[column]}"


def _at(scene: Scene, cell) -> SceneObject:
    (obj,) = [o for o in scene if (o.column, o.row) == tuple(cell)]  # only occupied cells are asked about
    return obj


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def answer(scene: Scene, spec: dict) -> str:
    """The one-word answer to question `spec` about `scene`, computed from the scene description."""
    kind = spec["kind"]
    if kind == "count":
        return NUMBERS[len(scene)]
    if kind == "count_colour":
        return NUMBERS[sum(o.colour == spec["colour"] for o in scene)]
    if kind == "count_shape":
        return NUMBERS[sum(o.shape == spec["shape"] for o in scene)]
    if kind == "colour_of":
        (obj,) = [o for o in scene if o.shape == spec["shape"]]
        return obj.colour
    if kind == "shape_of":
        (obj,) = [o for o in scene if o.colour == spec["colour"]]
        return obj.shape
    if kind == "size_of":
        return _find(scene, spec["a"]).size
    if kind == "left_of":
        return _yes(_find(scene, spec["a"]).column < _find(scene, spec["b"]).column)
    if kind == "above":
        return _yes(_find(scene, spec["a"]).row < _find(scene, spec["b"]).row)
    if kind == "extreme":
        key = {"leftmost": lambda o: o.column, "rightmost": lambda o: -o.column,
               "topmost": lambda o: o.row, "bottommost": lambda o: -o.row}[spec["where"]]
        best = min(scene, key=key)
        return getattr(best, spec["attribute"])
    if kind == "more_than":
        count = lambda colour: sum(o.colour == colour for o in scene)  # noqa: E731
        return _yes(count(spec["colour"]) > count(spec["other"]))
    if kind == "bigger":
        a, b = _find(scene, spec["a"]), _find(scene, spec["b"])
        return _yes(a.size == "large" and b.size == "small")
    if kind == "exists":
        return _yes(any(o.pair == tuple(spec["a"]) for o in scene))
    if kind == "colour_at":
        return _at(scene, spec["cell"]).colour
    if kind == "shape_at":
        return _at(scene, spec["cell"]).shape
    raise ValueError(f"unknown question kind {kind!r}; known: {', '.join(KINDS + GROUNDING_KINDS)}")


def question_text(spec: dict) -> str:
    """The English question for `spec`."""
    kind = spec["kind"]
    if kind == "count":
        return "How many objects are there?"
    if kind == "count_colour":
        return f"How many {spec['colour']} objects are there?"
    if kind == "count_shape":
        return f"How many {PLURALS[spec['shape']]} are there?"
    if kind == "colour_of":
        return f"What colour is the {spec['shape']}?"
    if kind == "shape_of":
        return f"What shape is the {spec['colour']} object?"
    if kind == "size_of":
        return f"Is the {_name(spec['a'])} small or large?"
    if kind == "left_of":
        return f"Is the {_name(spec['a'])} left of the {_name(spec['b'])}?"
    if kind == "above":
        return f"Is the {_name(spec['a'])} above the {_name(spec['b'])}?"
    if kind == "extreme":
        return f"What {'colour' if spec['attribute'] == 'colour' else 'shape'} is the {spec['where']} object?"
    if kind == "more_than":
        return f"Are there more {spec['colour']} objects than {spec['other']} objects?"
    if kind == "bigger":
        return f"Is the {_name(spec['a'])} bigger than the {_name(spec['b'])}?"
    if kind == "exists":
        return f"Is there a {_name(spec['a'])}?"
    if kind == "colour_at":
        return f"What colour is the object in the {cell_name(*spec['cell'])}?"
    if kind == "shape_at":
        return f"What shape is in the {cell_name(*spec['cell'])}?"
    raise ValueError(f"unknown question kind {kind!r}; known: {', '.join(KINDS + GROUNDING_KINDS)}")


def random_scene(rng: random.Random, split: str) -> Scene:
    """2-4 objects with distinct colour-shape pairs in distinct cells; train never shows `HELD_OUT_PAIRS`,
    eval always shows one of them."""
    allowed = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS]
    count = rng.randint(2, 4)
    pairs = rng.sample(allowed, count)
    if split == "eval":
        pairs[rng.randrange(count)] = rng.choice(HELD_OUT_PAIRS)
        if len(set(pairs)) < count:  # the drawn pair replaced a twin: keep pairs distinct
            return random_scene(rng, split)
    elif split != "train":
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    cells = rng.sample(range(GRID * GRID), count)
    return tuple(SceneObject(shape=s, colour=c, size=rng.choice(SIZES), column=cell % GRID, row=cell // GRID)
                 for (c, s), cell in zip(pairs, cells))


def candidate_specs(scene: Scene, unasked=()) -> dict[str, list[dict]]:
    """Every well-posed question about `scene`, by kind (a kind may have none); "exists" never names a
    pair in `unasked` (training must not learn that a held-out pair is always absent)."""
    pairs = [o.pair for o in scene]
    colours = {o.colour for o in scene}
    unique_shapes = [s for s in SHAPES if sum(o.shape == s for o in scene) == 1]
    unique_colours = [c for c in COLOURS if sum(o.colour == c for o in scene) == 1]
    ordered = [(a, b) for a in scene for b in scene if a is not b]
    out: dict[str, list[dict]] = {
        "count": [{"kind": "count"}],
        # colours and shapes absent from the scene too: "zero" is an answer
        "count_colour": [{"kind": "count_colour", "colour": c} for c in COLOURS],
        "count_shape": [{"kind": "count_shape", "shape": s} for s in SHAPES],
        "colour_of": [{"kind": "colour_of", "shape": s} for s in unique_shapes],
        "shape_of": [{"kind": "shape_of", "colour": c} for c in unique_colours],
        "size_of": [{"kind": "size_of", "a": p} for p in pairs],
        "left_of": [{"kind": "left_of", "a": a.pair, "b": b.pair} for a, b in ordered if a.column != b.column],
        "above": [{"kind": "above", "a": a.pair, "b": b.pair} for a, b in ordered if a.row != b.row],
        "extreme": [],
        "more_than": [{"kind": "more_than", "colour": c, "other": d} for c in COLOURS for d in COLOURS
                      if c != d and (c in colours or d in colours)],
        "bigger": [{"kind": "bigger", "a": a.pair, "b": b.pair} for a, b in ordered],
        "exists": [{"kind": "exists", "a": (c, s)} for c in COLOURS for s in SHAPES if (c, s) not in unasked],
        "colour_at": [{"kind": "colour_at", "cell": (o.column, o.row)} for o in scene],
        "shape_at": [{"kind": "shape_at", "cell": (o.column, o.row)} for o in scene],
    }
    for where, axis, sign in (("leftmost", "column", 1), ("rightmost", "column", -1),
                              ("topmost", "row", 1), ("bottommost", "row", -1)):
        values = [sign * getattr(o, axis) for o in scene]
        if values.count(min(values)) == 1:  # a unique extreme object
            out["extreme"] += [{"kind": "extreme", "where": where, "attribute": a} for a in ("colour", "shape")]
    return out


def mentions(spec: dict, pair) -> bool:
    """Whether question `spec` is about the object with colour-shape `pair`."""
    return tuple(spec.get("a", ())) == pair or tuple(spec.get("b", ())) == pair or (
        spec.get("colour") == pair[0] and spec["kind"] == "shape_of") or (
        spec.get("shape") == pair[1] and spec["kind"] == "colour_of")


def draw_questions(scene: Scene, count: int, rng: random.Random, focus=None, unasked=(), kinds=KINDS) -> list[dict]:
    """`count` distinct questions: kind uniform among `kinds` with candidates, yes/no half each way; with
    `focus` (a colour-shape pair), every other question is about that object where one exists."""
    candidates = candidate_specs(scene, unasked)
    chosen: list[dict] = []
    for _ in range(count * 20):
        if len(chosen) == count:
            break
        on_focus = focus is not None and len(chosen) % 2 == 0
        want = rng.choice(("yes", "no"))  # drawn first, so yes/no kinds without that answer step aside

        def fits(spec: dict) -> bool:
            if spec in chosen or (on_focus and not mentions(spec, focus)):
                return False
            return spec["kind"] not in YES_NO_KINDS or answer(scene, spec) == want

        open_kinds = [k for k in kinds if any(fits(s) for s in candidates[k])]
        if open_kinds:
            kind = rng.choice(open_kinds)
            chosen.append(rng.choice([s for s in candidates[kind] if fits(s)]))
        elif on_focus:
            focus = None  # nothing left to ask about the focus object
    return chosen


def render(scene: Scene, image_size: int, rng: random.Random | None = None) -> Image.Image:
    """The scene as an RGB image: a flat background, each shape filled in its colour, jittered in its cell
    by `rng` (None: centred)."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = image_size / GRID
    for obj in scene:
        radius = cell * (0.42 if obj.size == "large" else 0.22)
        slack = cell / 2 - radius
        dx, dy = (rng.uniform(-slack, slack), rng.uniform(-slack, slack)) if rng else (0.0, 0.0)
        cx, cy = (obj.column + 0.5) * cell + dx, (obj.row + 0.5) * cell + dy
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        elif obj.shape == "square":
            r = radius * 0.85  # a square of the same radius looks larger than the circle
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius * 0.8), (cx + radius, cy + radius * 0.8)],
                         fill=fill)
        else:  # diamond
            draw.polygon([(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)], fill=fill)
    return image


def scene_questions(split: str, count: int, seed: int = 0, questions_per_scene: int = 2, kinds=KINDS):
    """Yield (index, scene, [spec, ...]) for `count` scenes of `split`, deterministic under `seed`, asking
    question kinds from `kinds`."""
    rng = random.Random(f"vregion-scenes-{split}-{seed}")
    for index in range(count):
        scene = random_scene(rng, split)
        focus = next((o.pair for o in scene if o.pair in HELD_OUT_PAIRS), None)
        unasked = HELD_OUT_PAIRS if split == "train" else ()
        yield index, scene, draw_questions(scene, questions_per_scene, rng, focus, unasked, kinds), rng


def scene_samples(split: str, count: int, image_size: int = 224, seed: int = 0,
                  questions_per_scene: int = 2, dialogue: bool = False, kinds=KINDS) -> list[dict]:
    """`count` scenes of `split` ("train" | "eval") as VQA samples: one sample per question (the same
    picture shared by a scene's questions; each sample carries its "scene" and "question" spec), or with
    `dialogue` one sample per scene holding its questions as turns (carrying "scene" and "questions").
    `kinds`: the question kinds to ask (`KINDS + GROUNDING_KINDS` adds the grounding questions).

    Dialogues are how LLaVA's own data asks several questions of one image: every answer is supervised, and
    the image and the prompt are paid for once, so a training step learns from several answers per scene."""
    samples = []
    for index, scene, specs, rng in scene_questions(split, count, seed, questions_per_scene, kinds):
        png = png_bytes(render(scene, image_size, rng))
        described = [asdict(o) for o in scene]
        if dialogue:
            turns = [(question_text(spec), answer(scene, spec)) for spec in specs]
            sample = dialogue_sample(f"scene-{split}-{seed}-{index:05d}", turns, png)
            samples.append({**sample, "scene": described, "questions": specs})
            continue
        for q, spec in enumerate(specs):
            sample = question_sample(f"scene-{split}-{seed}-{index:05d}-{q}", question_text(spec),
                                     answer(scene, spec), png)
            samples.append({**sample, "scene": described, "question": spec})
    return samples


def scene_from_dicts(objects: list[dict]) -> Scene:
    """A scene back from its description (`scene_samples`' "scene" field)."""
    return tuple(SceneObject(**o) for o in objects)
