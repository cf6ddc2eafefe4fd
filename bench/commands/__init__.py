"""Subcommands of `bench` (one module each; see bench/cli.py)."""
