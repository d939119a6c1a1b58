"""Operator side of jams-dr: CLI, embedded two-region AWS, simulated JAMS fleet (not shipped to Lambda)."""
