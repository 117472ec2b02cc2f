"""The Sluice gateway: one live feed from the store, fanned out to many subscribers."""
