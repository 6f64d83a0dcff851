"""Reference model architectures the converters start from (server / teacher models)."""
