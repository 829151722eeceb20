"""See docs/design.md for this package's role."""
