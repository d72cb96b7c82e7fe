"""osrm-min's own, beyond the paper: subspace variants, carved splits, measures, a controlled experiment."""
