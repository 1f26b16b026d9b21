"""``python -m lohp_cli.cli`` (same as ``lohp`` and ``python -m lohp_cli``)."""

from lohp_cli.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
