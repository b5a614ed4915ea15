"""Model registry and model families (classical pipelines, networks)."""
