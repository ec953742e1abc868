"""Tests written to kill mutants of the core plumbing that the other tests let survive
(docs/testing.md, "Mutation testing")."""

from __future__ import annotations
