"""Tests of vregion.models (tiny random models, CPU, seconds)."""
