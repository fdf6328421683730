"""Reusable test harness: a federation of real daemons, hostile peers and network faults."""
