"""A seeded mutator of lohp's metadata documents, for the fuzz tests (issue 25).

A mutation picks one JSON document of an artifact (a store's ``zarr.json`` files, a policy's
``config.json`` and ``state/*.json``) or one of its small binary files and damages it the way
disks, hand edits and other writers do: a key removed, a value of another type, a number off by
one or out of range, two values swapped, a shape changed, text cut short or replaced by garbage.
Every mutation is made from ``random.Random(seed)``, so a failure names the seed that repeats it.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Path_ = tuple[Any, ...]  # a path of keys and indexes into a JSON document

OTHER_TYPES: tuple[Any, ...] = (None, True, 0, -1, 2**70, 1.5, "", "x", [], [1, "a"], {}, {"a": 1})


@dataclass(frozen=True)
class Mutation:
    """What was done, to which file (relative to the artifact's root), with which seed."""

    seed: int
    file: str
    what: str

    def __str__(self) -> str:
        return f"seed {self.seed}: {self.file}: {self.what}"


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` and the directory names: an input is unchanged when
    its snapshot is."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def _paths(doc: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every key path of a JSON document (containers and leaves)."""
    out: list[Path_] = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _get(doc: Any, path: Path_) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _change_value(rng: random.Random, value: Any) -> tuple[Any, str]:
    """Another value for ``value``: of another type, or a number moved (off by one, negative,
    beyond 64 bits, not finite as Python writes JSON: NaN, Infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or rng.random() < 0.5:
        new = rng.choice([v for v in OTHER_TYPES if type(v) is not type(value)])
        return new, f"value {value!r:.40} -> {new!r}"
    new = rng.choice([value + 1, value - 1, -abs(value) - 1, value * 2 + 1, 2**70, float("nan")])
    return new, f"number {value!r} -> {new!r}"


def mutate_json(rng: random.Random, doc: Any) -> tuple[Any, str]:
    """A damaged copy of a JSON document, and what was done."""
    doc = json.loads(json.dumps(doc))
    paths = _paths(doc)
    if not paths:
        return rng.choice(OTHER_TYPES), "the whole document replaced"
    path = rng.choice(paths)
    parent, key = _get(doc, path[:-1]), path[-1]
    op = rng.choice(["drop", "value", "value", "swap", "shape"])
    if op == "shape":
        shapes = [
            p
            for p in paths
            if p and p[-1] in ("shape", "chunk_shape") and isinstance(_get(doc, p), list)
        ]
        if shapes:
            p = rng.choice(shapes)
            shape = _get(doc, p)
            if shape:
                i = rng.randrange(len(shape))
                shape[i] = max(0, shape[i] + rng.choice([-1, 1, 3]))
                return doc, f"{'.'.join(map(str, p))}[{i}] -> {shape[i]}"
        op = "value"
    if op == "drop":
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
        return doc, f"{'.'.join(map(str, path))} removed"
    if op == "swap":
        siblings = list(parent) if isinstance(parent, dict) else list(range(len(parent)))
        other = rng.choice(siblings)
        parent[key], parent[other] = parent[other], parent[key]
        return doc, f"{'.'.join(map(str, path))} swapped with {other}"
    parent[key], what = _change_value(rng, parent[key])
    return doc, f"{'.'.join(map(str, path))}: {what}"


def mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Text or bytes cut short, replaced by garbage, or emptied."""
    op = rng.choice(["cut", "garbage", "empty", "flip"])
    if op == "cut" and len(data) > 1:
        n = rng.randrange(1, len(data))
        return data[:n], f"cut to {n} of {len(data)} bytes"
    if op == "flip" and data:
        b = bytearray(data)
        i = rng.randrange(len(b))
        b[i] ^= 0xFF
        return bytes(b), f"byte {i} flipped"
    if op == "garbage":
        return b"{garbage", "replaced by '{garbage'"
    return b"", "emptied"


def mutate(root: Path, files: list[str], seed: int) -> Mutation:
    """Damage one of ``files`` (relative to ``root``) in place."""
    rng = random.Random(seed)
    rel = rng.choice(files)
    path = root / rel
    data = path.read_bytes()
    if rel.endswith(".json") and rng.random() < 0.85:
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if doc is not None:
            new, what = mutate_json(rng, doc)
            path.write_text(json.dumps(new))
            return Mutation(seed, rel, what)
    new_bytes, what = mutate_bytes(rng, data)
    path.write_bytes(new_bytes)
    return Mutation(seed, rel, what)


def metadata_files(root: Path, also: tuple[str, ...] = ()) -> list[str]:
    """The metadata documents under ``root`` (every ``zarr.json`` and ``*.json``) and the files
    named in ``also``, relative to ``root``, in a fixed order."""
    found = {p.relative_to(root).as_posix() for p in root.rglob("*.json")}
    found |= {a for a in also if (root / a).is_file()}
    return sorted(found)
