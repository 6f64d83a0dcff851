"""Converters: one step per module (export, distil, quantize, compile, package). Depends on sdk only."""
