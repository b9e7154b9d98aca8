"""Tables regenerated from the metrics files: the results table and the teacher table with its plot."""
