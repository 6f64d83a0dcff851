"""Built-in hardware profiles: one YAML per target device class (see sdk.profiles)."""
