"""The `animate` command."""
