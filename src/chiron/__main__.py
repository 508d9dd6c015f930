"""``python -m chiron``."""

from chiron.cli import main

if __name__ == "__main__":
    main()
