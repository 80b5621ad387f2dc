"""Built-in students (one module per backend)."""
