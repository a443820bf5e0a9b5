"""Offline evaluation: splits, replay into a scratch database, ranking metrics."""
