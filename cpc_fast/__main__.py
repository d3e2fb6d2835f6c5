"""``python -m cpc_fast`` is the same as the ``cpc-fast`` console script."""

from cpc_fast.cli import main

if __name__ == "__main__":
    main()
