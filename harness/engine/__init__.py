"""The measurement: sites found by structure, the capture hooks, the statistics, the criteria, the result."""
