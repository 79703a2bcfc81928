"""Entry points, one module per `humpback` command, each runnable as `python -m humpback_trl.scripts.<name>` and
under `accelerate launch -m humpback_trl.scripts.<name>`."""

from humpback_trl.logs import quiet_known_messages

# Before any entry point imports the libraries: bitsandbytes logs its kernel lookup while it is imported.
quiet_known_messages()
