"""`python -m node.cli` runs the `moe` command (used to start node processes with this interpreter)."""

from node.cli import main

main()
