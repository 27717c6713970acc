"""Scheduling: per-model dynamic batching with bounded queues, and its statistics."""
