"""Exit codes shared by the ``sleepfed-server`` commands (``status`` adds its own, in
sleepfed.server.ops.status); docs/operations.md lists them all."""

EXIT_CONFIG = 2  # a configuration error, as in every sleepfed command
# A file of the state folder (history.db, boards.db) cannot be used: damaged, not ours, or
# unreadable. `run` exits so on a damaged registry: it fails closed (no board is let in),
# and restarting cannot mend it (the unit does not restart on it).
EXIT_STATE = 4
