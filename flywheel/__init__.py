"""Flywheel: settings, event schema, privacy and the command line."""
