"""Reports: metrics, figures, the HTML page of a run, comparisons across runs, previews."""
