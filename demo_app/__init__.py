"""The kiosk demo app; uses only the public sdk API."""
