"""``hybrid_unet``: Restormer-style U-Nets whose block slots are transformer or SSM blocks (ENS)."""
