"""The steps of the recovery, drill, failback and rollback workflows, one module per concern."""
