"""Persistent state of genms: vector collections, run records, the chat checkpointer."""
