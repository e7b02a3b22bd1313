"""Contract server of the Cozy data API (cozy-stack ``docs/data-system.md``), for the broker's Cozy adapter."""
