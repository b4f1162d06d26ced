"""gpu room."""
