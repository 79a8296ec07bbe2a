"""Forma eval: safety and accuracy suites, runners, scorers, the release gate, its report and the bundle."""
