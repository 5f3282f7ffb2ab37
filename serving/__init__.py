"""Forescale serving: the schedule store, the recommendation rules and the HTTP API."""
