"""``python -m lohp_cli`` entry point (also what ``torchrun -m lohp_cli`` starts)."""

from lohp_cli.cli import main

if __name__ == "__main__":
    main()
