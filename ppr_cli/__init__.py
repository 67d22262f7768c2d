"""The composition root of the one `ppr` command."""
