"""System checks for the AI configuration (filled in by the providers work)."""
