"""A gallery whose right answers are known from scene graphs, for the service-level tests.

Every image is a canonical rendering (no jitter) of a scene built here, so what a user should
see for each query follows from the scenes alone: a caption is true of an image exactly when
``synthetic.claim_true`` says so, a composed target is the scene the modification describes, and
an object covers the patch cells where its pixels differ from the background. Nothing here calls
the service's own ranking code to decide what is right.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from models import synthetic as syn

API = "/api/v1"
Obj = syn.Obj
IMAGE_SIDE = 64  # the bundled model's input size: one 8x8-pixel patch per explain grid cell
WARM = {"red", "orange", "yellow"}


class Http(Protocol):
    """What the checks need of a client: TestClient in process, httpx.Client against a server."""

    def post(self, url: str, **kwargs: Any) -> Any: ...
    def get(self, url: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Entry:
    scene: syn.Scene
    group: str  # "single", "pair" or "compose"

    @property
    def tags(self) -> list[str]:
        tags = [self.group]
        if any(o.color in WARM for o in self.scene.objects):
            tags.append("warm")
        return sorted(tags)

    @property
    def caption(self) -> str:
        return say(syn.full_claim(self.scene))

    @cached_property
    def png(self) -> bytes:
        buf = io.BytesIO()
        syn.render(self.scene, IMAGE_SIDE).save(buf, format="PNG")
        return buf.getvalue()


def say(claim: syn.Claim) -> str:
    """One fixed phrasing of a claim: "a large red circle left of a small blue square on a gray
    background"."""
    def noun(d: syn.ObjDesc) -> str:
        return " ".join(w for w in ("a", d.size, d.color, d.shape) if w)

    text = noun(claim.objects[0])
    if len(claim.objects) == 2:
        text += f" {claim.relation or 'and'} {noun(claim.objects[1])}"
    if claim.background:
        text += f" on a {claim.background} background"
    return text


@dataclass
class TwinPair:
    """Two scenes with the same objects in swapped places: the caption is true of one only."""

    true: syn.Scene
    twin: syn.Scene
    caption: str


@dataclass
class Modification:
    reference: syn.Scene
    text: str
    target: syn.Scene


@dataclass
class World:
    entries: list[Entry] = field(default_factory=list)
    pairs: list[TwinPair] = field(default_factory=list)
    modifications: list[Modification] = field(default_factory=list)
    ids: dict[syn.SceneKey, int] = field(default_factory=dict)  # filled by upload_world

    def clashes(self, scene: syn.Scene) -> bool:
        """Whether the full caption of ``scene`` is true of a stored scene, or the other way."""
        claim = syn.full_claim(scene)
        return any(syn.claim_true(claim, e.scene) or syn.claim_true(syn.full_claim(e.scene), scene)
                   for e in self.entries)

    def add(self, scene: syn.Scene, group: str) -> syn.Scene:
        """Add ``scene`` unless it is already there; each caption stays true of one scene."""
        if any(e.scene == scene for e in self.entries):
            return scene
        assert not self.clashes(scene), scene
        self.entries.append(Entry(scene, group))
        return scene

    def id_of(self, scene: syn.Scene) -> int:
        return self.ids[scene.key()]

    def scene_of(self, item_id: int) -> syn.Scene:
        return next(e.scene for e in self.entries if self.ids[e.scene.key()] == item_id)

    def entry_of(self, item_id: int) -> Entry:
        return next(e for e in self.entries if self.ids[e.scene.key()] == item_id)

    def with_tag(self, tag: str) -> set[int]:
        return {self.ids[e.scene.key()] for e in self.entries if tag in e.tags}


def _allowed(color: str, shape: str) -> bool:
    return (color, shape) not in syn.HELDOUT_PAIRS


def build_world() -> World:
    """Scenes: 17 relation-twin pairs (the 17th one the bundled dual encoder ranks the wrong
    way round), 4 references with 5 modifications each, and the
    allowed one-object (colour, shape) pairs whose captions clash with none of those."""
    world = World()
    rng = np.random.default_rng(2026)
    used: set[frozenset[tuple[str, str]]] = set()
    while len(world.pairs) < 17:
        c1, c2 = (str(c) for c in rng.choice(syn.COLORS, 2, replace=False))
        s1, s2 = (str(s) for s in rng.choice(syn.SHAPES, 2, replace=False))
        objs = frozenset({(c1, s1), (c2, s2)})
        if not (_allowed(c1, s1) and _allowed(c2, s2)) or objs in used:
            continue
        used.add(objs)
        relation = ("left of", "above")[len(world.pairs) % 2]
        near, far = ((0.28, 0.5), (0.72, 0.5)) if relation == "left of" else \
            ((0.5, 0.28), (0.5, 0.72))
        bg = ("teal", "navy")[len(world.pairs) % 2]  # references are on gray or beige
        true = syn.Scene(bg, (Obj(s1, c1, "large", *near), Obj(s2, c2, "large", *far)))
        twin = syn.Scene(bg, (Obj(s1, c1, "large", *far), Obj(s2, c2, "large", *near)))
        claim = syn.Claim((syn.ObjDesc(s1, c1), syn.ObjDesc(s2, c2)), relation)
        assert syn.claim_true(claim, true) and not syn.claim_true(claim, twin)
        world.pairs.append(TwinPair(world.add(true, "pair"), world.add(twin, "pair"), say(claim)))
    for bg, shape, color, colors, shapes in (
        ("gray", "circle", "red", ("blue", "green"), ("square", "triangle")),
        ("beige", "square", "blue", ("green", "white"), ("circle", "cross")),
        ("gray", "star", "yellow", ("orange", "black"), ("triangle", "circle")),
        ("beige", "cross", "orange", ("purple", "blue"), ("star", "square")),
    ):  # no held-out (colour, shape) pair: the model never saw those
        assert all(_allowed(c, shape) for c in colors) and all(_allowed(color, x) for x in shapes)
        ref = world.add(syn.Scene(bg, (Obj(shape, color, "large", 0.5, 0.5),)), "compose")
        for c in colors:
            target = syn.Scene(bg, (Obj(shape, c, "large", 0.5, 0.5),))
            world.modifications.append(
                Modification(ref, f"make the {shape} {c}", world.add(target, "compose")))
        for s in shapes:
            target = syn.Scene(bg, (Obj(s, color, "large", 0.5, 0.5),))
            world.modifications.append(
                Modification(ref, f"turn the {shape} into a {s}", world.add(target, "compose")))
        smaller = syn.Scene(bg, (Obj(shape, color, "small", 0.5, 0.5),))
        world.modifications.append(
            Modification(ref, f"make the {shape} smaller", world.add(smaller, "compose")))
    spots = [(0.25, 0.25), (0.75, 0.3), (0.3, 0.72), (0.72, 0.75), (0.5, 0.5), (0.25, 0.6)]
    k = 0
    for color in syn.COLORS:
        for shape in syn.SHAPES:
            if _allowed(color, shape):
                x, y = spots[k % len(spots)]
                size = "small" if k % 3 else "large"
                scene = syn.Scene(syn.BACKGROUNDS[k % 4], (Obj(shape, color, size, x, y),))
                if not world.clashes(scene):  # the same object on a pair's or a reference's
                    world.add(scene, "single")
                k += 1
    return world


def upload_world(client: Http, world: World) -> None:
    for entry in world.entries:
        resp = client.post(f"{API}/images", data={"caption": entry.caption, "tags": entry.tags},
                           files={"files": ("scene.png", entry.png, "image/png")})
        assert resp.status_code == 201, resp.text
        (item,) = resp.json()["items"]
        assert item["duplicate"] is False
        world.ids[entry.scene.key()] = item["id"]


def object_cells(scene: syn.Scene, grid: int = 8) -> np.ndarray:
    """(grid, grid) bool: the patch cells that at least a quarter of an object's pixels cover,
    from a rendering of the scene's geometry against its plain background."""
    pixels = np.asarray(syn.render(scene, IMAGE_SIDE), np.int32)
    background = np.asarray(syn.BACKGROUND_RGB[scene.background], np.int32)
    on_object = np.abs(pixels - background).sum(-1) > 30
    cell = IMAGE_SIDE // grid
    return on_object.reshape(grid, cell, grid, cell).mean(axis=(1, 3)) >= 0.25


def search(client: Http, path: str, **body: Any) -> list[dict[str, Any]]:
    resp = client.post(f"{API}/search/{path}", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()["hits"]  # type: ignore[no-any-return]


def ids(hits: Sequence[dict[str, Any]]) -> list[int]:
    return [h["id"] for h in hits]
