"""The PyFlink job: sources, parsing, the keyed user operator, sinks and the entry point."""
