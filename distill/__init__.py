"""FusionLog distill package."""
