"""sbnn package."""
