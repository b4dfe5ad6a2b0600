"""Prefect flows of graftline, their parameter models and the command-line entry point."""
