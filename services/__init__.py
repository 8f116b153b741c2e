"""The native stack: one module per server component, and the `revetl` CLI."""
