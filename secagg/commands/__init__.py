"""Subcommands of the ``secagg`` console command, one module each."""
