"""``python -m hsa_ref.golden_cases``: see :func:`hsa_ref.golden_cases.cli.main`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
