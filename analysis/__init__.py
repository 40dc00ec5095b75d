"""Analysis: load runs into pandas, summarise, compare routed vs single, plot and report."""
