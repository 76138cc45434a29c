"""FusionLog eval package."""
