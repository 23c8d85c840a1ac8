"""Dense detection and set prediction: assigners, matching, losses."""
