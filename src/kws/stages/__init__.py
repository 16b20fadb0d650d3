"""DVC pipeline stages: one module per stage in dvc.yaml, each with a ``main`` entry point."""
