"""Shared plumbing: layer resolution, target selection, hooks and input validation."""
