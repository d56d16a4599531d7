"""The replicated application: the commands the log carries and the state machine that applies
them."""
