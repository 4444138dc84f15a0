"""The commands: run, report, config, demo, simulate."""
