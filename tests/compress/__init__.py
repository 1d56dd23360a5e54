"""Tests for vregion.compress and the pooling kernel."""
