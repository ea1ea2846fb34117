"""``python -m hsa_ref.conformance.golden_set``: see :func:`.cli.main`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
