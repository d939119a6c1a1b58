"""The recovery-point pipeline: the retention rules, the tick that takes, copies, pins and prunes snapshots,
the recovery point a restore would use, cross-region backup replication, and the pin's published record."""
