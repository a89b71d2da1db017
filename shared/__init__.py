"""Code shared by the offline build and the online services (no torch here)."""
