"""Fault-injection suite: kills, corrupt input, NaN, full disks (see README, "Faults")."""
