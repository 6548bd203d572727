"""``python -m garrison``: the ``garrison`` command."""

from garrison.cli import main

if __name__ == "__main__":
    main(prog_name="garrison")
