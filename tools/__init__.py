"""Developer scripts: the GPU check, a tiny checkpoint and data, and before/after checks of a change."""
