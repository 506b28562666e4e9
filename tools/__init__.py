"""What the agent calls: chemistry checks, uniqueness, families, scoring, generation."""
