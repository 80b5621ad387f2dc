"""Built-in teachers (one module per backend)."""
