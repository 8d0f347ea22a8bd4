"""Built-in algorithms. Each registers under ``metactl.algorithms`` in pyproject.toml,
exactly as a third-party plugin would; nothing here is imported until it is chosen."""
