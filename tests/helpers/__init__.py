"""Test helpers: tiny hand-weighted models and assertion helpers."""
