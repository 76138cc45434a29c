"""Subcommands of the `fusionlog` CLI, one module each (discovered automatically)."""
