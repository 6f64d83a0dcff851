"""Convert: plan per hardware profile -> variants (distil, quantize) -> verify -> choose and publish."""
