"""Detection: the heartbeats and AWS events observed, the watch state and its store, the pure transition
from one check to the next, the decision table, and the watcher that starts a recovery or notifies."""
