"""The `lrm` command line: a thin typer layer over library functions."""
