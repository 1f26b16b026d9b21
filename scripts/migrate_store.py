"""Copy a trajectory store of schema version 1 (a group per run) into a new store of version 2
(runs in blocks), run ids, numbers and attributes unchanged (fingerprints included):

    python scripts/migrate_store.py OLD.zarr NEW.zarr [--block-runs 64]

The root attributes, the tasks, the frozen parts and the shared θ₀ are copied as they are; the
complete runs go into blocks of up to ``--block-runs`` runs of one optimizer. Runs that are not
complete are left out (``lohp collect --out NEW.zarr`` with the store's settings redoes them).
Then ``lohp inspect NEW.zarr --verify``.
"""

from __future__ import annotations

import argparse
import sys

from lohp_cli.store.migrate import migrate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--block-runs", type=int, default=64)
    a = ap.parse_args(argv)
    n = migrate(a.src, a.dst, a.block_runs)
    print(f"{n} complete run(s) copied into blocks: {a.dst}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
