"""`python -m bot` is `connect-access`."""

from bot.cli import main

if __name__ == "__main__":
    main()
