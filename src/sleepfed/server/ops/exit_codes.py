"""Exit codes shared by the ``sleepfed-server`` commands (``status`` adds its own, in
sleepfed.server.ops.status)."""

EXIT_CONFIG = 2  # a configuration error, as in every sleepfed command
