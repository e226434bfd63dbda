"""``python -m sleepfed_tools.replay``: the ``sleepfed-replay`` command."""

from sleepfed_tools.replay.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
