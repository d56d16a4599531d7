"""The ports the node handler talks through (DESIGN.md layer 3)."""
