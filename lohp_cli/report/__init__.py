"""What evaluate writes: report.json and report.md, their comparisons and plots, the DG table,
the locality and path analyses."""
