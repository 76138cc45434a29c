"""FusionLog router package."""
