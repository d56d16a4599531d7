"""The ports the node handler talks through."""
