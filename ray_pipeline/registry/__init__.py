"""Model registry: immutable versions, aliases with history, lineage, promotion gates."""
