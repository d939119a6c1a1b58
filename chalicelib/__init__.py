"""jams-dr Lambda code: everything under chalicelib/ ships with the Chalice app."""
