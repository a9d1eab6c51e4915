"""The jobs behind the CLI commands: validate everything first, then work, then write atomically."""
