"""The genms agent: command-line interface, planner, search graph and servers."""
