"""Rendering KanjiVG characters into grayscale images, each by several synthetic *drawers*.

KanjiVG (https://kanjivg.tagaini.net, CC BY-SA 3.0; the PyPI package ``kanjivg`` installs its SVG
files as a top-level ``kanji/`` folder) describes every character as its strokes, in writing
order, each an SVG path of cubic Bézier segments on a 109 × 109 grid, grouped by the components
(radicals) they belong to. lohp parses the paths with ``svgpathtools`` (a maintained SVG path
parser; no hand-written one) and draws them with Pillow.

**A drawer** is a deterministic perturbation of a character's strokes, seeded from (split seed,
character, drawer), in the spirit of Omniglot's 20 people drawing each character:

- every stroke is dropped with probability ``drop`` (at least one stroke is kept);
- every segment node of a stroke moves by N(0, ``jitter``²) grid units per coordinate, and each
  Bézier control point moves with its node plus half that noise of its own, so strokes bend
  smoothly rather than shake;
- the whole character goes through x ↦ A (x − c) + c + t with A = I + N(0, ``affine``²) per entry
  (rotation, shear and scale at once) and t ~ N(0, (``shift``·109)²) per coordinate;
- the stroke width is drawn uniformly from ``stroke_width`` (grid units; KanjiVG's own is 3).

Strokes are drawn white on black at four times the output size with round joints and caps, then
reduced to ``size`` × ``size`` with a box filter (anti-aliased), like Omniglot's 105 → 28 pixels.

**The cache.** Rendering is content-addressed: the key hashes the render settings, the KanjiVG
version and :data:`RENDER_VERSION`; the images go to ``<cache>/<key>.npy`` beside a JSON sidecar
holding their SHA-256 (both written to a temporary name, then renamed). A sidecar or array that is
missing, unreadable, of another shape or another hash is re-rendered. ``numpy.load`` never
unpickles (``allow_pickle=False``). The cache directory is ``task.data_root`` when given, else
``$LOHP_CACHE_DIR/glyphs``, else ``$XDG_CACHE_HOME/lohp/glyphs`` (``~/.cache/lohp/glyphs``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lohp_cli.config import GlyphConfig
from lohp_cli.errors import ConfigError, DataError
from lohp_cli.runtime import derive_seed

RENDER_VERSION = 1  # bump when the drawing changes: every cached rendering is then re-made
GRID = 109.0  # KanjiVG's coordinate box
SUPERSAMPLE = 4
POINTS_PER_SEGMENT = 8
INSTALL_HINT = "pip install 'lohp[glyphs]'"
_MAIN_FILE = re.compile(r"kanji/([0-9a-f]{5})\.svg")
_PATH = re.compile(r'<path\b[^>]*?\sd="([^"]+)"')
_RADICAL = re.compile(r"<g\b([^>]*?)kvg:radical=\"(general|tradit|nelson|jis)\"([^>]*)>")
_ATTR = re.compile(r'kvg:(element|original)="([^"]+)"')


def charset_of(codepoint: int) -> str:
    """The character set a codepoint belongs to: ``kanji`` (CJK unified ideographs, with
    extension A), ``kana`` (hiragana and katakana) or ``other`` (Latin letters, digits, marks)."""
    if 0x4E00 <= codepoint <= 0x9FFF or 0x3400 <= codepoint <= 0x4DBF:
        return "kanji"
    if 0x3040 <= codepoint <= 0x30FF:
        return "kana"
    return "other"


CHARSETS: dict[str, tuple[str, ...]] = {
    "kanji": ("kanji",),
    "kana": ("kana",),
    "all": ("kanji", "kana", "other"),
}


@dataclass(frozen=True)
class Character:
    """One KanjiVG character: its codepoint, its radical group and its strokes.

    ``strokes[i]`` is a float64 array ``[segments, 4, 2]``: the start, two control points and
    end of each cubic Bézier segment of stroke i, in grid units (x right, y down).
    ``radical`` is the character's classical radical (``kvg:radical`` general, else traditional,
    else Nelson), given as its original form when KanjiVG notes one (氵 → 水), or the character
    itself when it has none (kana, Latin letters).
    """

    codepoint: int
    radical: str
    strokes: tuple[np.ndarray, ...]

    @property
    def char(self) -> str:
        return chr(self.codepoint)


def _kanjivg_files() -> dict[int, Any]:
    """Codepoint -> the package file of its main SVG (variants such as ``-Kaisho`` left out)."""
    from importlib import metadata

    try:
        files = metadata.files("kanjivg") or []
    except metadata.PackageNotFoundError:
        raise DataError(
            f"Glyph tasks need the KanjiVG characters; install them with {INSTALL_HINT}."
        ) from None
    out = {}
    for f in files:
        m = _MAIN_FILE.fullmatch(str(f).replace("\\", "/"))
        if m:
            out[int(m[1], 16)] = f
    if not out:
        raise DataError(
            "The installed kanjivg package holds no kanji/*.svg files; reinstall it with "
            f"{INSTALL_HINT}."
        )
    return out


def kanjivg_version() -> str:
    """The installed kanjivg package's version (part of the cache key and the data fingerprint)."""
    from importlib import metadata

    try:
        return metadata.version("kanjivg")
    except metadata.PackageNotFoundError:
        raise DataError(
            f"Glyph tasks need the KanjiVG characters; install them with {INSTALL_HINT}."
        ) from None


def _radical(svg: str, codepoint: int) -> str:
    """The radical group of a character from its SVG text (see :class:`Character`)."""
    found: dict[str, str] = {}
    for before, kind, after in _RADICAL.findall(svg):
        attrs = dict(_ATTR.findall(before + after))
        name = attrs.get("original") or attrs.get("element")
        if name and kind not in found:
            found[kind] = name
    for kind in ("general", "tradit", "nelson", "jis"):
        if kind in found:
            return found[kind]
    return chr(codepoint)


def _strokes(svg: str, where: str) -> tuple[np.ndarray, ...]:
    """Every stroke path of an SVG as Bézier control points ``[segments, 4, 2]``."""
    from svgpathtools import CubicBezier, Line, QuadraticBezier, parse_path

    out = []
    for d in _PATH.findall(svg):
        try:
            path = parse_path(d)
        except Exception as exc:  # svgpathtools raises bare ValueErrors/IndexErrors on bad data
            raise DataError(
                f"KanjiVG file {where} has a path svgpathtools cannot parse: {exc}"
            ) from None
        segs = []
        for seg in path:
            if isinstance(seg, CubicBezier):
                pts = [seg.start, seg.control1, seg.control2, seg.end]
            elif isinstance(seg, QuadraticBezier):  # degree elevation: the same curve
                c1 = seg.start + 2 / 3 * (seg.control - seg.start)
                c2 = seg.end + 2 / 3 * (seg.control - seg.end)
                pts = [seg.start, c1, c2, seg.end]
            elif isinstance(seg, Line):
                pts = [seg.start, seg.start + (seg.end - seg.start) / 3,
                       seg.start + 2 * (seg.end - seg.start) / 3, seg.end]  # fmt: skip
            else:  # KanjiVG has no arcs; a future file with one is drawn by its chord
                pts = [seg.start, seg.start, seg.end, seg.end]
            segs.append([[p.real, p.imag] for p in pts])
        if segs:
            out.append(np.asarray(segs, dtype=np.float64))
    return tuple(out)


@lru_cache(maxsize=8)
def load_characters(charset: str) -> tuple[Character, ...]:
    """Every character of a character set (:data:`CHARSETS`), sorted by codepoint."""
    if charset not in CHARSETS:
        raise ConfigError(
            f"Unknown glyph character set '{charset}'; choose from {', '.join(CHARSETS)}."
        )
    files = _kanjivg_files()
    out = []
    for cp in sorted(files):
        if charset_of(cp) not in CHARSETS[charset]:
            continue
        svg = files[cp].read_text(encoding="utf-8")
        strokes = _strokes(svg, str(files[cp]))
        if strokes:
            out.append(Character(cp, _radical(svg, cp), strokes))
    return tuple(out)


def select_characters(cfg: GlyphConfig) -> tuple[Character, ...]:
    """The ``cfg.characters`` characters of ``cfg.charset`` that glyph tasks use, sorted by
    codepoint: all of them when the set has no more, else a fixed seeded sample (the same on
    every machine, independent of the split seed)."""
    chars = load_characters(cfg.charset)
    n = cfg.characters
    if n is None or n == len(chars):
        return chars
    if n > len(chars):
        raise ConfigError(
            f"task.glyphs.characters={n} exceeds the {len(chars)} characters of KanjiVG's "
            f"'{cfg.charset}' set; lower it or choose task.glyphs.charset=all."
        )
    rng = np.random.default_rng(derive_seed(0, "glyph-characters", cfg.charset))
    pick = np.sort(rng.choice(len(chars), n, replace=False))
    return tuple(chars[i] for i in pick)


# ---- drawing ---------------------------------------------------------------------------------
_T = np.linspace(0.0, 1.0, POINTS_PER_SEGMENT + 1)
_BERNSTEIN = np.stack([(1 - _T) ** 3, 3 * (1 - _T) ** 2 * _T, 3 * (1 - _T) * _T**2, _T**3], 1)
# [points, 4]: the cubic Bernstein weights of each sampled point


def perturb(
    char: Character, cfg: GlyphConfig, rng: np.random.Generator
) -> list[tuple[np.ndarray, float]]:
    """One drawer's version of a character: a polyline ``[points, 2]`` (grid units) per kept
    stroke, and the stroke width."""
    n = len(char.strokes)
    keep = rng.random(n) >= cfg.drop
    if not keep.any():
        keep[rng.integers(n)] = True
    a = np.eye(2) + rng.normal(0.0, cfg.affine, (2, 2))
    t = rng.normal(0.0, cfg.shift * GRID, 2)
    lo, hi = cfg.stroke_width
    width = float(rng.uniform(lo, hi))
    centre = np.array([GRID / 2, GRID / 2])
    out = []
    for stroke, kept in zip(char.strokes, keep, strict=True):
        segs = len(stroke)
        nodes = rng.normal(0.0, cfg.jitter, (segs + 1, 2))  # displacement of every node
        own = rng.normal(0.0, cfg.jitter / 2, (segs, 2, 2))  # of every control point
        if not kept:
            continue
        pts = stroke.copy()  # [segs, 4, 2]
        pts[:, 0] += nodes[:-1]
        pts[:, 3] += nodes[1:]
        pts[:, 1] += nodes[:-1] + own[:, 0]
        pts[:, 2] += nodes[1:] + own[:, 1]
        line = np.einsum("pk,skd->spd", _BERNSTEIN, pts)  # [segs, points, 2]
        line = np.concatenate([line[0, :1], line[:, 1:].reshape(-1, 2)])  # shared nodes once
        out.append(((line - centre) @ a.T + centre + t, width))
    return out


def draw(strokes: list[tuple[np.ndarray, float]], size: int) -> np.ndarray:
    """uint8 image ``[size, size]`` of polylines in grid units: white on black, round joints
    and caps, drawn at :data:`SUPERSAMPLE` times the size and box-filtered down."""
    from PIL import Image, ImageDraw

    big = size * SUPERSAMPLE
    scale = big / GRID
    img = Image.new("L", (big, big), 0)
    pen = ImageDraw.Draw(img)
    for line, width in strokes:
        xy = line * scale
        w = max(1, round(width * scale))
        pen.line([tuple(p) for p in xy], fill=255, width=w, joint="curve")
        r = w / 2
        for x, y in (xy[0], xy[-1]):
            pen.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def render_character(char: Character, cfg: GlyphConfig, split_seed: int) -> np.ndarray:
    """uint8 images ``[drawers, 1, size, size]`` of one character, drawer d seeded by
    (split seed, codepoint, d)."""
    out = np.empty((cfg.drawers, 1, cfg.size, cfg.size), dtype=np.uint8)
    for d in range(cfg.drawers):
        rng = np.random.default_rng(derive_seed(split_seed, "drawer", char.codepoint, d))
        out[d, 0] = draw(perturb(char, cfg, rng), cfg.size)
    return out


# ---- the cache -------------------------------------------------------------------------------
def cache_dir(data_root: str | None) -> Path:
    """Where rendered glyphs are cached (see the module docstring)."""
    if data_root:
        return Path(data_root)
    if os.environ.get("LOHP_CACHE_DIR"):
        return Path(os.environ["LOHP_CACHE_DIR"]) / "glyphs"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lohp" / "glyphs"


def cache_key(cfg: GlyphConfig, split_seed: int) -> str:
    """The content address of a rendering: settings, split seed, KanjiVG and renderer versions."""
    doc = {
        "glyphs": cfg.model_dump(mode="json"),
        "split_seed": split_seed,
        "kanjivg": kanjivg_version(),
        "render_version": RENDER_VERSION,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _read_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached images, or None when absent or damaged in any way."""
    side = path.with_suffix(".json")
    try:
        meta = json.loads(side.read_text())
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    ok = (
        isinstance(meta, dict)
        and arr.dtype == np.uint8
        and tuple(arr.shape) == shape
        and meta.get("sha256") == _sha256(arr)
    )
    return arr if ok else None


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def render_all(
    chars: tuple[Character, ...], cfg: GlyphConfig, split_seed: int, data_root: str | None
) -> np.ndarray:
    """uint8 images ``[characters, drawers, 1, size, size]``, from the cache when it holds an
    intact copy, else rendered and cached (a cache that cannot be written is skipped)."""
    shape = (len(chars), cfg.drawers, 1, cfg.size, cfg.size)
    where = cache_dir(data_root)
    path = where / f"{cache_key(cfg, split_seed)}.npy"
    cached = _read_cache(path, shape)
    if cached is not None:
        return cached
    images = np.stack([render_character(c, cfg, split_seed) for c in chars])
    try:
        where.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, lambda fh: np.save(fh, images, allow_pickle=False))
        meta = {"sha256": _sha256(images), "shape": list(shape), "kanjivg": kanjivg_version(),
                "render_version": RENDER_VERSION, "glyphs": cfg.model_dump(mode="json"),
                "split_seed": split_seed}  # fmt: skip
        _write_atomic(path.with_suffix(".json"), lambda fh: fh.write(json.dumps(meta).encode()))
    except OSError:
        pass  # a read-only or full disk: the images are still good, only not kept
    return images
