"""Runtime adapters, one module per backend; see sdk.runtime for the contract and the table."""
