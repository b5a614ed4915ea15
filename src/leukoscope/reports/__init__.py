"""Self-contained HTML reports (images embedded, no external assets)."""
