"""Subcommands with their own flags (`ext5 convert|inspect|experiment|cache ...`).

Each module here defines `main(argv: list[str]) -> int` with its own argparse parser and raises
`ext5.errors.UsageError` (or another one-line error known to `ext5.cli`) for bad input. The gin-driven
commands (train, eval, infer) live in `ext5.cli` itself.
"""
