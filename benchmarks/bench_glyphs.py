"""Benchmark: rendering KanjiVG characters into glyph images, cold and from the cache.

Run from the repository root (needs the glyphs extra: ``pip install 'lohp[glyphs]'``)::

    python benchmarks/bench_glyphs.py                      # 1,000 characters × 20 drawers
    python benchmarks/bench_glyphs.py --characters 1600    # the glyph families' default

Each repeat renders into a fresh temporary cache directory (cold: parse + draw + write), then
loads the same settings again (warm: read the ``.npy`` and check its SHA-256). Parsing KanjiVG's
SVG files is timed separately (it happens once per process). One process, one thread
(``OMP_NUM_THREADS`` does not matter: rendering is Pillow and numpy on one core). Reported:
medians over the repeats, the images per second, and the cold/warm ratio, with the 1-minute load
average read before and after (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lohp_cli.config import GlyphConfig  # noqa: E402
from lohp_cli.tasks import glyph_render  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--characters", type=int, default=1000)
    parser.add_argument("--drawers", type=int, default=20)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    glyph_render.load_characters("kanji")
    parse_s = time.perf_counter() - t
    cfg = GlyphConfig(characters=args.characters, drawers=args.drawers, size=args.size)
    chars = glyph_render.select_characters(cfg)
    cold, warm = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            images = glyph_render.render_all(chars, cfg, 0, tmp)
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            glyph_render.render_all(chars, cfg, 0, tmp)
            warm.append(time.perf_counter() - t)
    n = images.shape[0] * images.shape[1]
    c, w = statistics.median(cold), statistics.median(warm)
    print("| characters × drawers | images | parse KanjiVG (s) | render cold (s) | images/s | "
          "from cache (s) | cold / cache |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.characters} × {args.drawers} at {args.size}² | {n:,} | {parse_s:.2f} | "
          f"{c:.2f} | {n / c:,.0f} | {w:.3f} | {c / w:.0f}× |")  # fmt: skip
    print(f"\nload average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"{args.repeats} repeats, medians")  # fmt: skip


if __name__ == "__main__":
    main()
