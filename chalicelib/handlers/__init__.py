"""Chalice blueprints, one per trigger family; each handler parses, calls logic, returns."""
