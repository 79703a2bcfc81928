"""Entry points, one module per `humpback` command, each runnable as `python -m humpback_trl.scripts.<name>` and
under `accelerate launch -m humpback_trl.scripts.<name>`."""
