"""A run's bookkeeping: settings, command line, reuse of saved work, results.json, the report."""
