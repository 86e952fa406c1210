"""From a research question to a report: experiments, run folders, caches, freshness, reports, the gate."""
